"""Abuse tests of the search service: replayed clicks count once, clicks on items a request did not show
and forged request ids are refused, a client cannot pick its A/B arm, expand=true floods are capped, the
API key guards POST /click and /metrics when set; plus /metrics, /readyz and the bounded click memory."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import time
import tracemalloc
from dataclasses import replace

import httpx
import pytest
from fastapi.testclient import TestClient
from test_serve import cfg, dataset, workdir  # noqa: F401  (the tiny served workdir of the service tests)

from tandem.pipeline.run import run
from tandem.promptgen.expand import QueryExpander
from tandem.release import rollout
from tandem.serve import create_app, read_events
from tandem.serve.events import Served
from tandem.serve.security import API_KEY_ENV, SECRET_ENV, ClickMemory

SECRET = "a-test-secret-of-the-service-0123456789"


@pytest.fixture
def secret(monkeypatch):
    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.delenv(API_KEY_ENV, raising=False)
    return SECRET.encode()


@pytest.fixture
def client(workdir, cfg, secret):  # noqa: F811
    with TestClient(create_app(workdir, cfg)) as client:
        yield client


def clicks_of(client, request_id: str):
    client.app.state.events.flush()
    events = read_events(client.app.state.router.workdir)
    return events[(events["request_id"] == request_id) & (events["event"] == "click")]


def test_a_replayed_click_counts_once(client):
    served = client.get("/search", params={"q": "red lamp", "k": 3, "user_id": "replayer"}).json()
    item = served["items"][1]["item_id"]
    answers = [client.post("/click", json={"request_id": served["request_id"], "item_id": item}) for _ in range(50)]
    assert {a.status_code for a in answers} == {200}  # a retry is not an error...
    assert [a.json()["counted"] for a in answers] == [True] + [False] * 49  # ...but counts once
    assert len(clicks_of(client, served["request_id"])) == 1
    other = client.post("/click", json={"request_id": served["request_id"], "item_id": served["items"][0]["item_id"]})
    assert other.json()["counted"] is True and len(clicks_of(client, served["request_id"])) == 2  # another item
    metrics = client.get("/metrics").text
    assert 'tandem_clicks_total{result="duplicate"} 49.0' in metrics


def test_a_click_on_an_item_the_request_did_not_show_is_refused(client):
    served = client.get("/search", params={"q": "blue mug", "k": 3}).json()
    shown = {h["item_id"] for h in served["items"]}
    unshown = next(f"it{n}" for n in range(48) if f"it{n}" not in shown)
    response = client.post("/click", json={"request_id": served["request_id"], "item_id": unshown})
    assert response.status_code == 422 and "not among the results" in response.json()["detail"]
    assert clicks_of(client, served["request_id"]).empty


def test_forged_request_ids_are_refused(client, secret):
    served = client.get("/search", params={"q": "shoe", "k": 3, "user_id": "victim"}).json()
    item = served["items"][0]["item_id"]
    nonce, _, mac = served["request_id"].partition(".")
    # the id is an HMAC under the server secret of the nonce, the user, the arm and the experiment
    expected = hmac.new(secret, "\x1f".join(["request", nonce, "victim", "champion", ""]).encode(), hashlib.sha256)
    assert mac == expected.hexdigest()[:32]
    other = client.get("/search", params={"q": "hat", "k": 3}).json()["request_id"]
    flipped = mac[:-1] + ("0" if mac[-1] != "0" else "1")
    for forged in (
        f"{nonce}.{flipped}",  # a tampered MAC
        f"{nonce}.{other.partition('.')[2]}",  # another request's MAC
        nonce,  # unsigned (the old request ids were bare hex)
        hashlib.md5(nonce.encode()).hexdigest(),
    ):
        response = client.post("/click", json={"request_id": forged, "item_id": item})
        assert response.status_code == 403, (forged, response.text)
    assert clicks_of(client, served["request_id"]).empty
    assert client.post("/click", json={"request_id": served["request_id"], "item_id": item}).status_code == 200


def test_without_a_secret_one_is_kept_in_the_workdir(workdir, cfg, monkeypatch):  # noqa: F811
    monkeypatch.delenv(SECRET_ENV, raising=False)
    keys = []
    for _ in range(2):  # a restart keeps the secret: users stay in their arms, request ids stay valid
        with TestClient(create_app(workdir, cfg)) as client:
            keys.append(client.app.state.signer.route_key("alice"))
    path = workdir / "serving" / "secret"
    assert path.stat().st_mode & 0o777 == 0o600 and len(path.read_text().strip()) == 64
    assert keys[0] == keys[1] and keys[0] != "alice"


def test_the_api_key_guards_clicks_and_metrics(workdir, cfg, secret, monkeypatch, caplog):  # noqa: F811
    with caplog.at_level(logging.WARNING), TestClient(create_app(workdir, cfg)):
        pass
    assert f"{API_KEY_ENV} is not set" in caplog.text  # open: today's behaviour, said at start-up
    monkeypatch.setenv(API_KEY_ENV, "s3cret-key")
    with TestClient(create_app(workdir, cfg)) as client:
        served = client.get("/search", params={"q": "lamp", "k": 3}).json()  # search stays open
        body = {"request_id": served["request_id"], "item_id": served["items"][0]["item_id"]}
        none = client.post("/click", json=body)
        assert none.status_code == 401 and none.headers["WWW-Authenticate"] == "Bearer"
        assert client.post("/click", json=body, headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.post("/click", json={}, headers={"X-API-Key": "wrong"}).status_code == 403  # key first
        assert clicks_of(client, served["request_id"]).empty
        assert client.post("/click", json=body, headers={"X-API-Key": "s3cret-key"}).json()["counted"] is True
        body["item_id"] = served["items"][1]["item_id"]
        assert client.post("/click", json=body, headers={"Authorization": "Bearer s3cret-key"}).status_code == 200
        assert len(clicks_of(client, served["request_id"])) == 2
        assert client.get("/metrics").status_code == 401
        assert client.get("/metrics", headers={"X-API-Key": "s3cret-key"}).status_code == 200
        assert client.get("/readyz").status_code == 200 and client.get("/healthz").status_code == 200  # probes: open


def test_metrics_and_readiness(client):
    client.get("/search", params={"q": "red lamp", "k": 3})
    client.get("/similar/nope")
    client.get("/no/such/path/12345")
    text = client.get("/metrics").text
    print([line for line in text.splitlines() if "_count" in line or "_total" in line])
    assert 'tandem_request_seconds_count{method="GET",route="/search"} 1.0' in text
    assert 'tandem_responses_total{route="/similar/{item_id}",status="404"} 1.0' in text
    assert 'route="other"' in text and "/no/such/path" not in text  # client paths do not become labels
    assert 'tandem_batch_size_count{kind="search"} 1.0' in text
    assert "tandem_event_queue_depth 3.0" in text  # three impressions buffered, none written yet
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json() == {
        "ready": True,
        "checks": dict.fromkeys(("model", "index", "events"), True),
    }
    client.app.state.events.error = "OSError: disk full"  # the last write failed
    broken = client.get("/readyz")
    assert broken.status_code == 503 and broken.json()["checks"] == {"model": True, "index": True, "events": False}
    assert client.get("/healthz").status_code == 200  # alive, though not ready


def test_the_click_memory_is_bounded_by_bytes_and_age():
    now = [0.0]
    memory = ClickMemory(size=100_000, ttl=60, max_bytes=1 << 20, clock=lambda: now[0])
    items = tuple(f"item-{n:012d}" for n in range(100))
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(5000):  # 5,000 requests of 100 ids: about 1 KiB each as 8-byte hashes, capped at 1 MiB
        memory.put(f"{n:032x}", Served(f"user{n}", "a query of some length", "champion", "", items))
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert memory.bytes <= 1 << 20 and 500 < len(memory) < 5000 and held < 2 << 20, (memory.bytes, len(memory), held)
    assert memory.get(f"{0:032x}") is None and memory.get(f"{4999:032x}").position("item-000000000042") == 42
    now[0] = 61.0  # older than the TTL: forgotten
    assert memory.get(f"{4999:032x}") is None
    memory.put("fresh", Served("u", "", "champion", "", items))
    first, again = memory.claim("fresh", items[7]), memory.claim("fresh", items[7])
    assert first[1:] == (7, True) and again[1:] == (7, False) and memory.claim("fresh", "other")[1] is None


class SlowGenerator:
    """Writes one prompt per query, slowly: expanded requests overlap."""

    def generate(self, intents, task, length, relevance, n, seed, temperature, top_p):
        time.sleep(1.0)
        return [[f"{i} deluxe"] * n for i in intents]


def test_an_expand_flood_is_capped(workdir, cfg, secret, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.setattr(QueryExpander, "load", classmethod(lambda cls, path, k: QueryExpander(SlowGenerator(), k=k)))
    capped = replace(cfg, serve=replace(cfg.serve, max_expand=2))

    async def flood():
        app = create_app(workdir, capped, promptgen=tmp_path, expand_k=1)
        async with app.router.lifespan_context(app):
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://serve") as client:
                params = {"q": "lamp", "k": 3, "expand": "true"}
                answers = await asyncio.gather(*(client.get("/search", params=params) for _ in range(8)))
                after = await client.get("/search", params=params)  # the flood is over: served again
                return answers, after, (await client.get("/metrics")).text

    answers, after, metrics = asyncio.run(flood())
    statuses = sorted(a.status_code for a in answers)
    assert statuses == [200] * 2 + [429] * 6, [a.text[:200] for a in answers]
    refused = next(a for a in answers if a.status_code == 429)
    assert refused.headers["Retry-After"] == "1" and "serve.max_expand" in refused.json()["detail"]
    assert after.status_code == 200 and after.json()["expansion"] == ["lamp", "lamp deluxe"]
    assert "tandem_expand_rejected_total 6.0" in metrics and "tandem_expand_in_flight 0.0" in metrics


def test_a_client_cannot_pick_its_arm(workdir, cfg, dataset, secret):  # noqa: F811
    run(*dataset, workdir, cfg, run_id="armtest", progress=False)  # a second collection: the challenger
    with TestClient(create_app(workdir, cfg)) as client:
        live = client.get("/healthz").json()["live"]
        other = ({"tandem_first", "tandem_armtest"} - {live}).pop()
        # the salt defaults to the experiment's name, which /healthz tells anyone
        state = rollout.RolloutState("exp-arms", "exp-arms", live, other, (50.0, 100.0))
        rollout.save_state(workdir, state)
        try:
            assert client.get("/healthz").json()["experiment"] == "exp-arms"
            # the attacker picks user ids that the rollout's own bucketing puts in the challenger...
            chosen = [u for u in (f"mallory{n}" for n in range(200)) if rollout.arm(state, u) == "challenger"][:30]
            served = [client.get("/search", params={"q": "red mug", "user_id": u}).json() for u in chosen]
            assert all("arm" not in r and "collection" not in r for r in served)  # responses do not tell
            client.app.state.events.flush()
        finally:
            rollout.save_state(workdir, replace(state, status="aborted"))
    events = read_events(workdir).query("experiment == 'exp-arms' and event == 'impression'")
    arms = events.groupby("request_id")["arm"].first()
    assert len(arms) == 30
    # ...but the service buckets a keyed hash of the id: about half land in each arm, as for anyone
    assert 5 <= (arms == "challenger").sum() <= 25, arms.value_counts()
