"""The casework commands through a running server (``RETROFACE_URL``) equal the local ones.

Two worlds are built by the same steps (accounts, tokens, the enrolled people): one the CLI opens
in-process as today, the other served by the real app under uvicorn on a loopback port, which the
CLI reaches over HTTP with each user's token. The same commands then run in both, and each pair
must print the same thing (text and ``--json``) with the same exit status, and leave the same audit
records (action, actor, case, object, justification, details). What may differ is normalised
explicitly: times (each world runs at its own moment) and the credential a record names (``cli-
token:N`` locally; ``token:N`` through the API, which cannot know its client is the CLI).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from argon2 import PasswordHasher
from PIL import Image
from sqlalchemy import select
from tests.browser import _free_port, live_server
from tests.conftest import BACKENDS, add_team, database_on, enrol_people
from typer.testing import CliRunner

from retroface.api.app import create_app
from retroface.cli.main import app as cli_app
from retroface.cli.session import state
from retroface.config import Settings, get_settings
from retroface.context import AppContext
from retroface.storage.tables import AuditRecord, FaceTemplate, ReferenceImage, Subject
from retroface.vision.types import FaceEngine

PASSWORD = "a long test password"
TEAM = {
    "admin": "admin",
    "olive": "operator",
    "oscar": "operator",
    "alice": "authoriser",
    "rita": "reviewer",
    "rob": "reviewer",
}
CASE_ARGS = [
    "--offence",
    "robbery",
    "--purpose",
    "identify the suspect",
    "--justification",
    "serious offence, the only lead available",
]
PROVENANCE = ["--source", "CCTV", "--how-obtained", "exhibit AB/1"]


class World:
    """One deployment: its context, its users' tokens, and how the CLI reaches it."""

    def __init__(self, ctx: AppContext, tokens: dict[str, str], url: str | None) -> None:
        self.ctx = ctx
        self.tokens = tokens
        self.url = url

    def run(self, user: str | None, *args: str, token: str | None = None) -> tuple[int, str]:
        """``retroface ARGS`` as ``user`` (their token), in-process."""
        env = {"RETROFACE_TOKEN": token or (self.tokens[user] if user else "")}
        if self.url is not None:
            env["RETROFACE_URL"] = self.url
            state.__dict__.pop("ctx", None)  # a remote command must not need a local context
        else:
            state.__dict__["ctx"] = self.ctx
        state._principal = None
        state._remote = None
        old = {k: os.environ.get(k) for k in ("RETROFACE_TOKEN", "RETROFACE_URL")}
        os.environ.update(env)
        if self.url is None:
            os.environ.pop("RETROFACE_URL", None)
        try:
            result = CliRunner().invoke(cli_app, list(args), catch_exceptions=False)
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            if state._remote is not None:
                state._remote.close()
            state._remote = None
        return result.exit_code, result.output

    def audit(self) -> list[dict[str, Any]]:
        with self.ctx.db.session() as s:
            rows = s.scalars(select(AuditRecord).order_by(AuditRecord.seq)).all()
            return [_record(r) for r in rows]


def _record(r: AuditRecord) -> dict[str, Any]:
    details = dict(r.details or {})
    credential = details.pop("credential", None)
    if isinstance(credential, str):
        # the API's "token:N" is the CLI's "cli-token:N": same token, another front end
        details["credential"] = credential.removeprefix("cli-")
    return {
        "actor": r.actor,
        "action": r.action,
        "case": r.case_ref,
        "object": (r.object_type, r.object_id),
        "justification": r.justification,
        "details": _norm(json.dumps(details, sort_keys=True, default=str)),
    }


#: Times in every form the CLI prints them: ISO 8601 (JSON), "2026-12-01 17:30[:05[.123]]" (text).
TIMES = re.compile(r"\d{4}-\d\d-\d\dT?[ T]?\d\d:\d\d(:\d\d(\.\d+)?)?(Z|[+-]\d\d:\d\d)?")


def _norm(text: str) -> str:
    return TIMES.sub("<time>", text)


def _make_world(home: Path, database_url: str, engine: FaceEngine, data_dir: Path) -> AppContext:
    settings = Settings(home=home, database_url=database_url, retention_interval_minutes=0)
    ctx = AppContext(settings, engine=engine)
    ctx.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    add_team(ctx, TEAM, PASSWORD)
    enrol_people(ctx, data_dir)
    return ctx


def _tokens(ctx: AppContext) -> dict[str, str]:
    return {
        u: ctx.users.issue_token(ctx.users.principal_for(u), u, "cli", dt.timedelta(days=1))
        for u in TEAM
    }


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for var in ("RETROFACE_URL", "RETROFACE_TOKEN", "RETROFACE_USER", "RETROFACE_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("COLUMNS", "120")
    get_settings.cache_clear()
    yield
    state.__dict__.pop("ctx", None)
    state._principal = None
    state._remote = None
    state.user = None
    state.server = None
    state.local = False


@pytest.fixture(params=BACKENDS)
def worlds(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    engine: FaceEngine,
    data_dir: Path,
    clean_env: None,
) -> Iterator[tuple[World, World]]:
    """(local, served): the same accounts, tokens and gallery, on two databases."""
    with (
        database_on(request.param, tmp_path / "l") as url_l,
        database_on(request.param, tmp_path / "s") as url_s,
    ):
        (tmp_path / "l").mkdir(exist_ok=True)
        (tmp_path / "s").mkdir(exist_ok=True)
        local = _make_world(tmp_path / "l" / "home", url_l, engine, data_dir)
        served = _make_world(tmp_path / "s" / "home", url_s, engine, data_dir)
        try:
            tokens_l, tokens_s = _tokens(local), _tokens(served)
            with live_server(served) as base:
                yield World(local, tokens_l, None), World(served, tokens_s, base)
        finally:
            local.close()
            served.close()


@pytest.fixture
def stills(data_dir: Path, tmp_path: Path) -> dict[str, Path]:
    """Good faces, a group photo, a blank image, a non-image, a missing file and a folder."""
    folder = tmp_path / "stills"
    (folder / "more").mkdir(parents=True)
    blank = folder / "blank.png"
    Image.new("RGB", (300, 300), (120, 120, 120)).save(blank)
    junk = folder / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    lfw = data_dir / "lfw"
    (folder / "more" / "obama3.jpg").write_bytes(
        (data_dir / "people/barack_obama/obama3.jpg").read_bytes()
    )
    return {
        "biden": lfw / "Joseph_Biden/Joseph_Biden_0001.jpg",
        "obama": data_dir / "people/barack_obama/obama.jpg",
        "kit": data_dir / "people/kit_harington/johnsnow_test1.jpg",
        "group": data_dir / "people/_multi_face_scenes/obama_and_biden.jpg",
        "blank": blank,
        "junk": junk,
        "missing": folder / "not-there.jpg",
        "folder": folder / "more",
    }


def _both(
    local: World, served: World, user: str | None, *args: str, token: str | None = None
) -> tuple[int, str]:
    """Run in both worlds; the pair must agree (after normalising times). Returns the local."""
    code_l, out_l = local.run(user, *args, token=token)
    code_s, out_s = served.run(user, *args, token=token)
    assert (code_s, _norm(out_s)) == (code_l, _norm(out_l)), f"retroface {' '.join(args)}"
    return code_l, out_l


@pytest.mark.slow
def test_casework_through_the_server_equals_local(
    worlds: tuple[World, World], stills: dict[str, Path]
) -> None:
    local, served = worlds
    both: Callable[..., tuple[int, str]] = lambda user, *args: _both(local, served, user, *args)  # noqa: E731

    # cases: open (one with "/" in its reference), authorise, list, show, team
    assert both("olive", "case", "open", "--ref", "C1", *CASE_ARGS)[0] == 0
    assert both("olive", "case", "open", "--ref", "CR/7/26", *CASE_ARGS, "--json")[0] == 0
    code, out = both("alice", "case", "authorise", "C1", "--approve", "--note", "proportionate")
    assert code == 0 and "approved" in out
    code, out = both("alice", "case", "authorise", "CR/7/26", "--approve", "--note", "ok", "--json")
    assert json.loads(out)["reference"] == "CR/7/26"
    both("olive", "case", "list")
    assert len(json.loads(both("olive", "case", "list", "--json")[1])["cases"]) == 2
    both("olive", "case", "list", "--status", "approved", "--json")
    both("olive", "case", "show", "C1")
    both("olive", "case", "show", "CR/7/26", "--json")
    assert both("olive", "case", "team", "add", "C1", "oscar", "--json")[0] == 0
    both("olive", "case", "team", "list", "C1")
    both("olive", "case", "team", "remove", "C1", "oscar")

    # one image, text and JSON
    code, out = both("olive", "search", str(stills["obama"]), "--case", "C1", *PROVENANCE)
    assert code == 0 and "barack_obama" in out
    code, out = both(
        "olive", "search", str(stills["kit"]), "--case", "CR/7/26", *PROVENANCE, "--json"
    )
    (kit,) = json.loads(out)
    assert kit["candidates"][0]["subject"] == "kit_harington"

    # a batch: good and bad probes and a folder, in input order, one entry each, exit 2
    order = ["biden", "blank", "junk", "missing", "group", "folder"]
    batch = [str(stills[k]) for k in order]
    code, out = both("olive", "search", *batch, "--case", "C1", *PROVENANCE, "--json", "--top", "3")
    assert code == 2
    entries = json.loads(out)
    assert [e["input"] for e in entries] == [
        *batch[:-1],
        str(stills["folder"] / "obama3.jpg"),
    ]
    codes = [e.get("error", {}).get("code") for e in entries]
    assert codes == [None, "no_face", "invalid_image", "unreadable", "several_faces", None]
    assert entries[0]["candidates"][0]["subject"] == "joe_biden"
    code, out = both("olive", "search", *batch, "--case", "C1", *PROVENANCE)
    assert code == 2 and "2 searched, 4 failed" in out

    # the group photo's probe, its face chosen; an enhanced version of it
    group = entries[4]["probe_id"]
    code, out = both("olive", "search", "--probe", str(group), "--face", "0", "--case", "C1")
    assert code == 0
    code, out = both(
        "olive", "probe", "enhance", str(group), "--step", '{"op": "upscale", "factor": 2}'
    )
    assert code == 0 and "enhanced version" in out
    both("olive", "probe", "enhance", str(group), "--steps", '[{"op": "denoise"}]', "--json")

    # blind two-person review
    search_id = entries[0]["search_id"]
    both("rita", "review", "queue")
    assert json.loads(both("rita", "review", "queue", "--json")[1])["queue"]
    both("rita", "review", "show", str(search_id))
    note = ["--note", "same person"]
    decide = ["review", "decide", str(search_id), "--decision", "possible match", "--rank", "1"]
    assert both("rita", *decide, *note)[0] == 0
    both("rob", "review", "show", str(search_id), "--json")
    assert both("rob", *decide, *note, "--json")[0] == 0
    both("rita", "review", "show", str(search_id))

    # errors a service raises come back the same way: one line, exit status 2
    assert both("olive", "case", "show", "NOPE")[0] == 2
    assert both("olive", "search", "--probe", "99999", "--case", "C1")[0] == 2
    assert both("rita", "review", "decide", "99999", "--decision", "no match", *note)[0] == 2
    code, out = _both(local, served, None, "case", "list", token="not-a-token")
    assert code == 2 and "error" in out

    # the same audit records, in the same order
    records_l, records_s = local.audit(), served.audit()
    assert len(records_l) == len(records_s)
    for a, b in zip(records_l, records_s, strict=True):
        assert b == a
    actions = [r["action"] for r in records_s]
    # one search record per image searched (2 of the batch's 6 images, twice) and one probe
    # record per image stored (4 of 6: not the junk nor the missing file)
    assert actions.count("search.run") == 2 + 2 * 2 + 1
    assert actions.count("probe.add") == 2 + 2 * 4
    assert any(r["details"].find('"credential": "token:') >= 0 for r in records_s)


@pytest.fixture
def served(tmp_path: Path, engine: FaceEngine, data_dir: Path, clean_env: None) -> Iterator[World]:
    """One world behind a server, on SQLite (the error paths do not depend on the store)."""
    ctx = _make_world(tmp_path / "home", f"sqlite:///{tmp_path / 'r.db'}", engine, data_dir)
    try:
        tokens = _tokens(ctx)
        with live_server(ctx) as base:
            yield World(ctx, tokens, base)
    finally:
        ctx.close()


@pytest.mark.slow
def test_remote_errors_map_to_clear_messages(served: World, stills: dict[str, Path]) -> None:
    # a wrong token: refused by the server, exit 2 like a local refusal
    code, out = served.run(None, "case", "list", token="not-a-token")
    assert code == 2 and "error:" in out and "not-a-token" not in out
    # a role that may not do this: refused at the API's gate, and audited there
    code, out = served.run("rita", "case", "open", "--ref", "X1", *CASE_ARGS)
    assert code == 2 and "rita may not call this: needs operator" in out
    refused = [r for r in served.audit() if r["action"].endswith(".refused")]
    assert refused and refused[-1]["actor"] == "rita"
    # a batch refused at its first image (case not authorised) is one error, nothing stored
    assert served.run("olive", "case", "open", "--ref", "X2", *CASE_ARGS)[0] == 0
    code, out = served.run(
        "olive", "search", str(stills["biden"]), str(stills["kit"]), "--case", "X2", *PROVENANCE
    )
    assert code == 2 and out.count("error:") == 1
    # --user names somebody else than the token's owner
    code, out = served.run("olive", "--user", "rita", "case", "list")
    assert code == 2 and "RETROFACE_TOKEN belongs to olive" in out
    # a password instead of a token: exchanged for a short-lived one
    os.environ["RETROFACE_PASSWORD"] = PASSWORD
    try:
        code, out = served.run(None, "--user", "olive", "case", "list", "--json", token="")
    finally:
        del os.environ["RETROFACE_PASSWORD"]
    assert code == 0 and [c["reference"] for c in json.loads(out)["cases"]] == ["X2"]
    # a proxy in the environment is not used for plain http (loopback): the token stays here
    dead_proxy = f"http://127.0.0.1:{_free_port()}"
    saved = {k: os.environ.get(k) for k in ("HTTP_PROXY", "ALL_PROXY", "NO_PROXY")}
    os.environ.update({"HTTP_PROXY": dead_proxy, "ALL_PROXY": dead_proxy, "NO_PROXY": ""})
    try:
        assert served.run("olive", "case", "list", "--json")[0] == 0
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # video searches are local only: said plainly, nothing searched
    code, out = served.run(
        "olive", "search", "--video", str(stills["biden"]), "--track", "1", "--case", "X2"
    )
    assert code == 2 and "video searches run locally only" in out


def test_server_down_and_plain_http(clean_env: None) -> None:
    world = World(None, {"olive": "t"}, f"http://127.0.0.1:{_free_port()}")  # type: ignore[arg-type]
    code, out = world.run("olive", "case", "list")
    assert code == 3 and "cannot reach the retroface server" in out
    world.url = "http://example.org"  # refused before any connection: the token stays here
    code, out = world.run("olive", "case", "list")
    assert code == 2 and "plain http" in out
    world.url = "ftp://127.0.0.1/"
    assert world.run("olive", "case", "list")[0] == 2


def _certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A private CA and a certificate it signed for localhost / 127.0.0.1 (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = dt.datetime.now(dt.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder()
        .subject_name(name("retroface test CA"))
        .issuer_name(name("retroface test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_pem.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_pem, key_pem


@contextmanager
def tls_server(ctx: AppContext, cert: Path, key: Path) -> Iterator[str]:
    """``live_server`` over HTTPS: the real app, a certificate from a private CA."""
    port = _free_port()
    config = uvicorn.Config(
        create_app(ctx),
        host="127.0.0.1",
        port=port,
        log_level="warning",
        ssl_certfile=str(cert),
        ssl_keyfile=str(key),
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.05)
    try:
        yield f"https://localhost:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_tls_is_verified_and_a_private_ca_can_be_named(
    tmp_path: Path, engine: FaceEngine, clean_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(
        home=tmp_path / "home",
        database_url=f"sqlite:///{tmp_path / 't.db'}",
        retention_interval_minutes=0,
    )
    ctx = AppContext(settings, engine=engine)
    ctx.users.hasher = PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1)
    try:
        add_team(ctx, {"admin": "admin", "olive": "operator"}, PASSWORD)
        world = World(ctx, _tokens_for(ctx, ["olive"]), None)
        ca, cert, key = _certificates(tmp_path)
        with tls_server(ctx, cert, key) as base:
            world.url = base
            # the private CA is not in the system's trust store: refused, nothing sent
            code, out = world.run("olive", "case", "list", "--json")
            assert code == 3 and "TLS verification" in out and "RETROFACE_CA_BUNDLE" in out
            monkeypatch.setenv("RETROFACE_CA_BUNDLE", str(ca))
            code, out = world.run("olive", "case", "list", "--json")
            assert code == 0 and json.loads(out) == {"cases": []}
            # plain HTTP to the TLS port is not a retroface answer
            world.url = base.replace("https://", "http://")
            assert world.run("olive", "case", "list")[0] == 3
    finally:
        ctx.close()


def _tokens_for(ctx: AppContext, users: list[str]) -> dict[str, str]:
    return {
        u: ctx.users.issue_token(ctx.users.principal_for(u), u, "cli", dt.timedelta(days=1))
        for u in users
    }


#: What a remote command must never load: the database, the models, OpenCV, NumPy, the web stack.
NOT_REMOTE = (
    "sqlalchemy",
    "onnxruntime",
    "cv2",
    "numpy",
    "fastapi",
    "starlette",
    "retroface.context",
    "retroface.config",
    "retroface.audit",
    "retroface.vision",
    "retroface.search.service",
)


@pytest.mark.slow
def test_a_remote_search_loads_no_model_stack(served: World, stills: dict[str, Path]) -> None:
    """A new process searching through the server prints its candidates without importing the
    database layer or the face models (what makes it start fast: bench/cli_startup.py)."""
    assert served.run("olive", "case", "open", "--ref", "C1", *CASE_ARGS)[0] == 0
    assert served.run("alice", "case", "authorise", "C1", "--approve", "--note", "ok")[0] == 0
    code = (
        "import json, sys\n"
        "from retroface.cli.main import app\n"
        "try:\n"
        f"    app(['search', {str(stills['biden'])!r}, '--case', 'C1', '--source', 'CCTV',"
        " '--how-obtained', 'exhibit', '--json'], prog_name='retroface')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    env = {
        **os.environ,
        "RETROFACE_URL": served.url or "",
        "RETROFACE_TOKEN": served.tokens["olive"],
        "RETROFACE_HOME": "/nonexistent",  # nothing local is opened
    }
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    (entry,) = json.loads(done.stdout)
    assert entry["candidates"][0]["subject"] == "joe_biden"
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert sorted(m for m in NOT_REMOTE if m in modules) == []

    # an enrolment through the server: the images are read here, enrolled there
    enrol = (
        "import json, sys\n"
        "from retroface.cli.main import app\n"
        "try:\n"
        f"    app(['gallery', 'enrol', {str(stills['biden'])!r}, '--json'],"
        " prog_name='retroface')\n"
        "except SystemExit as exc:\n"
        "    assert exc.code in (0, None), exc.code\n"
        "sys.stderr.write(json.dumps(sorted(sys.modules)))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", enrol],
        capture_output=True,
        text=True,
        timeout=120,
        env=env | {"RETROFACE_TOKEN": served.tokens["admin"]},
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["enrolled"] == 1
    modules = set(json.loads(done.stderr.strip().splitlines()[-1]))
    assert sorted(m for m in NOT_REMOTE if m in modules) == []


#: A remote enrolment's run time is its own (measured by the CLI over the requests).
SECONDS = re.compile(r" in \d+(\.\d+)? s \(")


def _enrol_both(local: World, served: World, *args: str) -> tuple[int, str]:
    """``gallery enrol ARGS`` as the admin in both worlds: the same output but for the run time."""
    code_l, out_l = local.run("admin", "gallery", "enrol", *args)
    code_s, out_s = served.run("admin", "gallery", "enrol", *args)
    if "--json" in args:
        timeless = ("seconds", "images_per_second")
        out_l, out_s = (
            json.dumps({k: v for k, v in json.loads(o).items() if k not in timeless})
            for o in (out_l, out_s)
        )
    else:
        out_l, out_s = (SECONDS.sub(" in <t> s (", o) for o in (out_l, out_s))
    assert (code_s, out_s) == (code_l, out_l), f"retroface gallery enrol {' '.join(args)}"
    return code_l, out_l


def _gallery_rows(world: World) -> list[tuple[Any, ...]]:
    with world.ctx.db.session() as s:
        rows = s.execute(
            select(
                Subject.reference,
                Subject.display_name,
                Subject.inclusion_reason,
                Subject.source,
                Subject.retention_until,
                ReferenceImage.original_name,
                ReferenceImage.provenance,
                ReferenceImage.capture_date,
                ReferenceImage.content_hash,
                ReferenceImage.width,
            )
            .join(ReferenceImage, ReferenceImage.subject_id == Subject.id)
            .order_by(ReferenceImage.id)
        ).all()
    return [tuple(r) for r in rows]


@pytest.mark.slow
def test_enrolment_through_the_server_equals_local(
    worlds: tuple[World, World], stills: dict[str, Path], data_dir: Path, tmp_path: Path
) -> None:
    """``retroface gallery enrol`` sent to the server (groups of images over one connection)
    enrols the same subjects and images with the same labels, prints the same summary, and
    leaves the same audit records as a local run."""
    local, served = worlds
    folder = tmp_path / "enrol"
    lfw = data_dir / "lfw"
    for person, count in (("Abdullah_Gul", 3), ("Abel_Pacheco", 2)):
        (folder / person).mkdir(parents=True)
        for image in sorted((lfw / person).glob("*.jpg"))[:count]:
            (folder / person / image.name).write_bytes(image.read_bytes())
    (folder / "nobody").mkdir()
    (folder / "nobody" / "blank.png").write_bytes(stills["blank"].read_bytes())
    (folder / "nobody" / "junk.jpg").write_bytes(stills["junk"].read_bytes())
    labels = ["--inclusion-reason", "custody image", "--source", "test", "--json"]

    # a folder of sub-folders with bad images among them, and a file that is not there
    code, out = _enrol_both(local, served, str(folder), str(stills["missing"]), *labels)
    summary = json.loads(out)
    assert code == 0 and (summary["enrolled"], summary["subjects"]) == (5, 2)
    reasons = [r["reason"] for r in summary["rejected"]]
    assert len(reasons) == 3 and reasons[-1].startswith("unreadable"), reasons
    # again: everything is skipped (by content hash); the text summary
    code, out = _enrol_both(local, served, str(folder))
    assert code == 0 and "enrolled 0, skipped 5 (already enrolled), rejected 2" in out
    # a manifest with per-image labels, the group photo's face chosen, a retention date
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "path,subject,face,display_name,capture_date,legal_basis\n"
        f"{stills['group']},group_left,0,Left one,2024-05-01,s.64 PACE\n"
        f"{lfw / 'Abel_Pacheco/Abel_Pacheco_0003.jpg'},Abel_Pacheco,,,,\n"
    )
    until = ["--retain-until", "2030-01-01"]
    code, out = _enrol_both(local, served, "--manifest", str(manifest), *until)
    assert code == 0 and "enrolled 2" in out and "subjects 2" in out
    # more images than one request carries (32): several requests, one summary
    many = tmp_path / "many"
    people = sorted(p for p in lfw.iterdir() if p.is_dir())[40:80]
    for person in people:
        (many / person.name).mkdir(parents=True)
        first = sorted(person.glob("*.jpg"))[0]
        (many / person.name / first.name).write_bytes(first.read_bytes())
    options = ["--multi-face", "main", "--json"]
    code, out = _enrol_both(local, served, str(many), *options)
    # none rejected: then a request of 32 is one commit on the server as 32 images are locally
    assert code == 0 and json.loads(out)["subjects"] == 40 and not json.loads(out)["rejected"]

    assert _gallery_rows(served) == _gallery_rows(local)
    records_l, records_s = local.audit(), served.audit()
    assert [r["action"] for r in records_s].count("gallery.enrol") >= 4
    assert records_s == records_l

    # who may enrol is the server's rule: an operator is refused there, and it is recorded
    code, out = served.run("olive", "gallery", "enrol", str(folder))
    assert code == 2 and "olive may not" in out
    assert served.audit()[-1]["action"].endswith(".refused")
    # the server's index holds every template the database does (it applied each run)
    served.run("admin", "gallery", "enrol", str(stills["obama"]))
    answer = httpx.get(
        f"{served.url}/api/v1/gallery/index",
        headers={"Authorization": f"Bearer {served.tokens['admin']}"},
    ).json()
    with served.ctx.db.session() as s:
        templates = len(s.scalars(select(FaceTemplate.id)).all())
    assert (answer["templates"], answer["version"]) == (templates, answer["gallery_version"])
