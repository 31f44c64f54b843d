"""Settings from the environment (``RETROFACE_*``), with documented defaults."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


def _default_home() -> Path:
    return Path.home() / ".retroface"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETROFACE_", extra="ignore")

    #: Data directory: SQLite database, encrypted image store, index files, keys.
    home: Path = Field(default_factory=_default_home)
    #: SQLAlchemy URL; defaults to SQLite under ``home``. PostgreSQL in production.
    database_url: str | None = None
    #: Face backend: ``arcface`` (default), ``dlib`` or ``fused`` (ArcFace + EdgeFace-S).
    backend: str = "arcface"
    #: Folder with SCRFD/ArcFace-compatible ONNX files replacing the bundled weights.
    models_dir: Path | None = None
    #: Detector input size: 640 default; 1280 finds small faces in HD frames (slower).
    det_size: int = 640
    det_threshold: float = 0.5
    #: onnxruntime intra-op threads (0 = all cores).
    threads: int = 0
    #: onnxruntime execution providers in order of preference, comma-separated short names
    #: (``cpu``, ``cuda``, ``tensorrt``, ``openvino``, ``rocm``, ``directml``, ``coreml``) or full
    #: names; unset: CUDA where the installed onnxruntime has it, else the CPU. Missing ones fall
    #: back to the CPU with a warning; the model key does not depend on them.
    providers: str = ""
    #: Test-time flip augmentation (embedding of the crop plus its mirror).
    flip: bool = False
    #: Vector index: ``auto`` (default: exact ``flat`` up to 200k templates, ``lean`` above),
    #: ``flat``, ``lean`` (PQ codes + exact re-rank), ``ivf`` or ``hnsw``; docs/gallery.md.
    index_kind: str = "auto"
    #: Split the gallery index over this many Ray actors (docs/scale.md), each holding an index
    #: of ``index_kind`` for its share of the templates; 0 keeps one index in this process.
    index_shards: int = Field(default=0, ge=0)
    #: Ray cluster the shards run on (``host:port`` of ``ray start --head``); unset with
    #: ``index_shards`` > 0, a Ray instance is started in this process on loopback only.
    ray_address: str | None = None

    #: API/web requests whose handlers run at once, the rest waiting in arrival order; 0 keeps
    #: AnyIO's default of 40 worker threads. Measured with 50 concurrent searches on 2 busy cores
    #: (docs/performance.md, "API under 50 concurrent search clients"): 4 threads halved SQLite's
    #: throughput (its lock waits sleep) and did not shorten PostgreSQL's tail, so it is opt-in.
    api_threads: int = Field(default=0, ge=0, le=1000)
    #: Largest accepted upload (API), bytes.
    max_upload_bytes: int = 25_000_000
    #: Folder the API's batch enrolment may read from (unset: batch import over the API is off).
    import_dir: Path | None = None
    max_image_pixels: int = 50_000_000
    #: Serve the OpenAPI document and the docs pages (``/api/v1/openapi.json``, ``/docs``,
    #: ``/redoc``) without a token. False: any signed-in role may read them, nobody else.
    public_docs: bool = True
    #: Blur every face in every face image the API and the web pages serve (privacy display
    #: for documentation screenshots and demonstrations); a request may add blurring, never
    #: remove it.
    blur_all_faces: bool = False
    #: Fairness gate (docs/fairness.md): a new threshold calibration whose evaluation shows a
    #: rank-1 FNIR (or FPIR) ratio between the highest and lowest group above this is refused
    #: unless an admin overrides it with a justification (audited, published). The shipped
    #: arcface record exceeds 1.5 on FNIR (3.1): the gate applies to changes, not to it.
    fairness_max_fnir_ratio: float = Field(default=1.5, ge=1.0)
    fairness_max_fpir_ratio: float = Field(default=1.5, ge=1.0)
    #: Cosine similarity at which ``compare`` calls two faces the same person.
    match_threshold: float = 0.36
    #: Redis for background jobs (RQ workers: ``python -m retroface.jobs.redis_queue``); unset,
    #: jobs run in a thread of the process that submits them.
    redis_url: str | None = None
    redis_queue: str = "retroface"

    #: Web pages: a sign-in lasts this many hours (it is an API token named "web session").
    web_session_hours: float = 12.0
    #: Session cookies only over HTTPS (browsers treat ``localhost`` as secure). Turn off only for
    #: a plain-HTTP trial on a private network.
    secure_cookies: bool = True
    #: When the reviewer's pages show a candidate's similarity score: ``after-look`` (hidden
    #: until the reviewer asks for it, or has had the comparison view open for
    #: ``review_look_seconds``: a score seen first anchors the judgement of the faces),
    #: ``always`` or ``never``.
    review_reveal_scores: Literal["after-look", "always", "never"] = "after-look"
    review_look_seconds: float = Field(default=20.0, ge=0)
    #: The latest evaluation report (``retroface eval identify --html PATH``) shown to auditors on
    #: the reports page (default ``home/reports/evaluation.html``).
    eval_report: Path | None = None

    #: Governance policy (see docs/governance.md). Offence categories: comma-separated.
    offence_categories: str = ""
    urgent_window_hours: float = 48.0
    authorisation_days: float = 90.0
    probe_retention_days: float = 90.0
    search_record_retention_days: float = 365.0
    audit_retention_days: float = 2190.0
    #: ``serve`` runs retention (lapsed urgent cases, expired probes, searches, subjects) every
    #: N minutes; 0 turns the scheduler off (then run ``retroface retention run`` from cron).
    retention_interval_minutes: float = 5.0
    #: A login refused by the throttle is answered after this many seconds: the wait costs the
    #: server no CPU (the connection is parked on the event loop), and a client that ignores
    #: Retry-After can then try at most once a second per connection instead of flooding.
    login_throttle_pause: float = 1.0
    #: Sign the audit chain's head every N records (at least 1; also the most unsigned records
    #: ``audit verify`` accepts) and when a record comes more than T minutes after the last
    #: signature (0: no time trigger). See docs/security.md.
    audit_checkpoint_every: int = 50
    audit_checkpoint_minutes: float = 5.0
    #: Ed25519 key signing audit checkpoints (default ``home/keys/audit_ed25519.pem``).
    audit_signing_key: Path | None = None
    #: Append-only file outside the database receiving every signed head and (with
    #: ``audit_anchor_heads``) the head after each commit; default
    #: ``home/anchors/audit-anchors.jsonl``. Point it at another mount or host than the database.
    audit_anchor: Path | None = None
    audit_anchor_heads: bool = True
    #: Also send each signed head to syslog (``/dev/log``, facility authpriv).
    audit_anchor_syslog: bool = False
    #: PEM file of retired audit signing public keys whose checkpoints still verify (rotation).
    audit_trusted_keys: Path | None = None

    @property
    def resolved_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'retroface.db'}"

    @property
    def resolved_audit_signing_key(self) -> Path:
        return self.audit_signing_key or self.home / "keys" / "audit_ed25519.pem"

    @property
    def resolved_audit_anchor(self) -> Path:
        return self.audit_anchor or self.home / "anchors" / "audit-anchors.jsonl"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
