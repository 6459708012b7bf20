"""Processes that start together on an empty database agree on keys (threads stand in for them)."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from joserfc.jwk import ECKey

from service.access.clients import add_client, bootstrap_admin, list_clients
from service.access.scopes import Scopes
from service.access.tokens import TokenService, signing_key_states
from service.infra import migrate
from service.infra.db import make_engine
from service.infra.settings import Settings
from tests.kit.auth import ec_key, jwks


def test_replicas_starting_together_accept_each_others_tokens(new_database: Any) -> None:
    engine = make_engine(Settings(database_url=new_database("postgres")))
    migrate.upgrade(engine)
    add_client(engine, "ehr", ["system/*.rs"], jwks=jwks(ec_key("ehr-1")))
    replicas = [TokenService(engine) for _ in range(4)]
    with ThreadPoolExecutor(4) as pool:  # each makes (or finds) the signing key at once
        grants = list(pool.map(lambda t: t._issue("ehr", Scopes.parse("system/*.rs")), replicas))
    for grant in grants:
        for replica in replicas:
            assert replica.verify(grant.access_token).client == "ehr"
    assert len(signing_key_states(engine)) == 1  # the first key is made once, under a lock
    engine.dispose()


def test_admins_starting_together_leave_one_key_that_matches(
    new_database: Any, tmp_path: Path
) -> None:
    engine = make_engine(Settings(database_url=new_database("postgres")))
    migrate.upgrade(engine)
    key_file = tmp_path / "admin-key.jwk"
    with ThreadPoolExecutor(4) as pool:
        won = list(pool.map(lambda _: bootstrap_admin(engine, key_file), range(4)))
    assert won.count(True) == 1
    (admin,) = list_clients(engine)
    assert admin.key_ids == (ECKey.import_key(json.loads(key_file.read_text())).kid,)
    assert key_file.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["admin-key.jwk"]
    engine.dispose()
