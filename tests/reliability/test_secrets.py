"""Secrets never reach the store: a corpus of realistic (fake) credentials, injected through
every capture path of real runs, then every byte of every file in the store is scanned.

The fake secrets are generated at run time in their real formats (nothing secret-shaped is
written in this file, so secret scanners on the repository stay quiet). Places:

- a function job's config values (keyword arguments: named secrets, and credential-shaped
  values under ordinary names), and a value generated in the job (``run.log_config``);
- the environment of the submitting process, inherited by the job (captured at submit and on
  the node: selected variables only, redacted);
- a command job's command line (``submit_command``): ``--password=``, ``--token x``,
  ``Authorization: Bearer`` headers, URLs with user:password;
- the git remote URL of a real repository (a token in ``https://x-access-token:TOKEN@...``);
- the message of an exception raised in a job (a database URL with a password).

A function run's pickled call (``entrypoint.call_blob``) holds placeholders where the
redaction rules flag an argument, and a command run keeps only its redacted argv (the items
redaction changed are withheld whole, as ``argv[i]``): the values wait in an owner-only file
outside the store (``RUNREC_SECRETS_DIR``) until the job reads and removes it. So every file of
the store must be clean, the pickled calls included (``call_blobs_holding_secrets`` is 0).
Secrets that travel only through the environment or the git remote must be in no file at all.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import re
import string
import sys
from dataclasses import dataclass, field

import pytest
import zstandard
from helpers import git, run_cli
from helpers import write_figures as _write_results

import runrec_cluster as rr
from runrec_cluster.capture.redact import (
    REDACTED,
    load_rules,
    redact_argv,
    redact_text,
    redact_value,
    strip_url_credentials,
)
from runrec_cluster.errors import ConfigError
from runrec_cluster.store import layout

RESULTS_DIR = os.environ.get("RUNREC_RELIABILITY_RESULTS") or os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "results"
)


# ---------------------------------------------------------------------------------------------
# the corpus: fake secrets in real formats
# ---------------------------------------------------------------------------------------------

ALNUM = string.ascii_letters + string.digits
UPPER = string.ascii_uppercase + string.digits
HEX = "0123456789abcdef"
B64 = ALNUM + "+/"
URLSAFE = ALNUM + "-_"


@dataclass
class Secret:
    label: str
    fmt: str
    value: str
    body: list[str]  # the random parts: each must be absent, and so must slices of it
    places: list[str] = field(default_factory=list)

    def needles(self) -> list[str]:
        out = {self.value}
        for b in self.body:
            out.add(b)
            if len(b) >= 24:
                out.update({b[:12], b[len(b) // 2 - 6 : len(b) // 2 + 6], b[-12:]})
        return sorted(out)


class Corpus:
    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.items: dict[str, Secret] = {}

    def r(self, alphabet: str, n: int) -> str:
        s = "".join(self.rng.choice(alphabet) for _ in range(n))
        # a digit and a letter in every random part (as in the real formats)
        letters = [ch for ch in alphabet if ch.isalpha()]
        return s[:-2] + self.rng.choice(string.digits) + self.rng.choice(letters)

    def add(self, label: str, fmt: str, value: str, *body: str) -> str:
        self.items[label] = Secret(label, fmt, value, list(body) or [value])
        return value

    def __getitem__(self, label: str) -> str:
        return self.items[label].value

    def used(self, label: str, place: str) -> str:
        self.items[label].places.append(place)
        return self.items[label].value


def _pem(c: Corpus, kind: str) -> tuple[str, list[str]]:
    lines = [c.r(B64, 64) for _ in range(6)]
    head = f"-----BEGIN {kind}PRIVATE KEY-----"
    tail = f"-----END {kind}PRIVATE KEY-----"
    return "\n".join([head, *lines, tail]) + "\n", lines


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def build_corpus(seed: int = 20240611) -> Corpus:
    c = Corpus(seed)
    b = c.r(UPPER, 16)
    c.add("aws_access_key_id", "AWS access key id", "AK" + "IA" + b, b)
    c.add("aws_secret_access_key", "AWS secret access key", c.r(B64, 40))
    # a second AWS pair, only in the environment
    b = c.r(UPPER, 16)
    c.add("aws_access_key_id_env", "AWS access key id", "AK" + "IA" + b, b)
    c.add("aws_secret_access_key_env", "AWS secret access key", c.r(B64, 40))
    pem, lines = _pem(c, "")
    key_id = c.r(HEX, 40)
    sa = {
        "type": "service_account",
        "project_id": "lab-prod",
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": "trainer@lab-prod.iam.gserviceaccount.com",
        "client_id": "1" + "".join(c.rng.choice(string.digits) for _ in range(20)),
        "token_uri": "https://oauth2.googleapis.com/token",
    }
    c.add("gcp_service_account", "GCP service-account JSON", json.dumps(sa), key_id, *lines)
    k = c.r(B64, 86) + "=="
    c.add(
        "azure_connection_string",
        "Azure storage connection string",
        "DefaultEndpointsProtocol=https;AccountName=labdata;AccountKey="
        + k
        + ";EndpointSuffix=core.windows.net",
        k,
    )
    for label in ("github_classic", "github_classic_remote", "github_classic_env"):
        b = c.r(ALNUM, 36)
        c.add(label, "GitHub token ghp_", "gh" + "p_" + b, b)
    b = c.r(ALNUM, 22) + "_" + c.r(ALNUM, 59)
    c.add("github_fine_grained", "GitHub token github_pat_", "github" + "_pat_" + b, b)
    b = c.r(URLSAFE, 20)
    c.add("gitlab", "GitLab token glpat-", "gl" + "pat-" + b, b)
    b = "".join(c.rng.choice(string.digits) for _ in range(12)) + "-" + c.r(ALNUM, 24)
    c.add("slack_bot", "Slack token xoxb-", "xo" + "xb-" + b, b)
    b = c.r(ALNUM, 48)
    c.add("openai", "OpenAI key sk-", "s" + "k-" + b, b)
    b = c.r(URLSAFE, 100)
    c.add("openai_project", "OpenAI key sk-proj-", "s" + "k-proj-" + b, b)
    b = c.r(URLSAFE, 93)
    c.add("anthropic", "Anthropic key sk-ant-", "s" + "k-ant-api03-" + b + "AA", b)
    for label in ("huggingface", "huggingface_env"):
        b = c.r(ALNUM, 34)
        c.add(label, "Hugging Face token hf_", "h" + "f_" + b, b)
    b = c.r(ALNUM, 24)
    c.add("stripe_live", "Stripe key sk_live_", "s" + "k_" + "live_" + b, b)
    b = c.r(ALNUM, 36)
    c.add("npm", "npm token npm_", "np" + "m_" + b, b)
    b = c.r(URLSAFE, 120)
    c.add("pypi", "PyPI token pypi-", "py" + "pi-AgEIcHlwaS5vcmc" + b, b)
    for label in ("wandb", "wandb_env"):
        c.add(label, "W&B API key (40 hex)", c.r(HEX, 40))
    b = c.r(URLSAFE, 35)
    c.add("google_api_key", "Google API key AIza", "AI" + "za" + b, b)
    payload = _b64url(json.dumps({"sub": c.r(ALNUM, 16), "iat": 1718000000}).encode())
    sig = c.r(URLSAFE, 43)
    c.add(
        "jwt",
        "JWT",
        _b64url(b'{"alg":"HS256","typ":"JWT"}') + "." + payload + "." + sig,
        payload,
        sig,
    )
    pem, lines = _pem(c, "RSA ")
    c.add("pem_rsa", "PEM RSA private key", pem, *lines)
    lines = [
        "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQ" + c.r(B64, 28),
        *(c.r(B64, 70) for _ in range(5)),
    ]
    c.add(
        "openssh",
        "OpenSSH private key",
        "-----BEGIN OPENSSH PRIVATE KEY-----\n"
        + "\n".join(lines)
        + "\n-----END OPENSSH PRIVATE KEY-----\n",
        *lines[1:],
    )
    for label in ("db_password", "db_password_cmd", "db_password_exc", "pip_password"):
        c.add(label, "password in a URL", c.r(ALNUM, 20))
    c.add("bearer_opaque", "Authorization: Bearer header", c.r(ALNUM, 40))
    c.add("cli_password", "--password= value", "Tr0ub4dor-" + c.r(ALNUM, 14))
    c.add("cli_token", "--token value", c.r(ALNUM, 32))
    c.add("env_redis_password", "password in a variable", c.r(ALNUM, 24))
    c.add("env_mirror_password", "password in a URL", c.r(ALNUM, 18))
    c.add("generated_token", "token generated in the job", c.r(ALNUM, 32))
    c.add("tag_token", "token in a tag", c.r(ALNUM, 32))
    return c


def _db_url(pw: str) -> str:
    return f"postgresql://ml_user:{pw}@db.internal:5432/experiments"


# ---------------------------------------------------------------------------------------------
# the rules, case by case (fast)
# ---------------------------------------------------------------------------------------------


def test_every_format_in_the_corpus_is_redacted_under_an_ordinary_name():
    """Value shapes: a credential under a name that says nothing (``notes``, an argv element)
    still goes; named-only secrets (AWS secret, W&B, passwords) go under their usual names."""
    c = build_corpus(7)
    named = {
        "aws_secret_access_key": "aws_secret_access_key",
        "aws_secret_access_key_env": "AWS_SECRET_ACCESS_KEY",
        "wandb": "WANDB_API_KEY",
        "wandb_env": "wandb_api_key",
        "cli_password": "password",
        "cli_token": "token",
        "tag_token": "registry_token",
        "env_redis_password": "RAY_REDIS_PASSWORD",
        "generated_token": "access_token",
        "bearer_opaque": "authorization",
    }
    checked = 0
    for label, s in c.items.items():
        if label in named:
            out = json.dumps(redact_value(named[label], s.value))
        elif "password" in label:
            out = redact_text(f"connect to {_db_url(s.value)} now")
        else:
            out = json.dumps(redact_value("notes", f"use {s.value} for the upload"))
        leaked = [n for n in s.needles() if n in out]
        assert not leaked, f"{label}: {leaked} survived in {out!r}"
        checked += 1
    assert checked == len(c.items)
    # the Bearer header on a command line, and --flag forms
    tok = c["bearer_opaque"]
    argv = redact_argv(["curl", "-H", f"Authorization: Bearer {tok}", "--token", "abc12345"])
    assert tok not in json.dumps(argv) and argv[-1] == REDACTED
    assert redact_argv([f"--password={c['cli_password']}"]) == [f"--password={REDACTED}"]


@pytest.mark.parametrize(
    "name,value",
    [
        ("lr", 0.1),
        ("max_tokens", 512),
        ("max_new_tokens", 256),
        ("eos_token", "</s>"),
        ("pad_token_id", 0),
        ("tokenizer", "bert-base-uncased"),
        ("tokenizer_name", "gpt2"),
        ("sort_key", "length"),
        ("label_key", "y"),
        ("num_passes", 3),
        ("author", "alice"),
        ("keyword", "cat"),
        ("password_file", "/run/secrets/db"),
        ("token_url", "https://oauth2.googleapis.com/token"),
        ("PWD", "/home/alice/proj"),
        ("HF_HOME", "/scratch/hf"),
        ("commit", "3f786850e387550fdab836ed7e6dc881de23001b"),
        ("digest", "sha256:" + "ab" * 32),
        ("parent_run", "01j0b6m3s2f1q9w8e7r6t5y4v3"),
        ("path", "s3://bucket/date=2024-01-01/split=train/part-0.parquet"),
        ("notes", "warmup over 5 epochs, see https://arxiv.org/abs/1706.03762"),
        ("model", "sk-learn-baseline-random-forest"),
        ("ssh_remote", "git@github.com:lab/proj.git"),
    ],
)
def test_ordinary_values_are_not_redacted(name, value):
    assert redact_value(name, value) == value


def test_url_credentials_are_stripped_and_ssh_users_kept():
    tok = "gh" + "p_" + "a1" * 18
    assert (
        strip_url_credentials(f"https://x-access-token:{tok}@github.com/lab/p.git")
        == "https://github.com/lab/p.git"
    )
    assert strip_url_credentials(f"https://{tok}@github.com/lab/p.git") == (
        "https://github.com/lab/p.git"
    )
    assert strip_url_credentials("ssh://git@github.com/lab/p.git") == (
        "ssh://git@github.com/lab/p.git"
    )
    assert strip_url_credentials("git@github.com:lab/p.git") == "git@github.com:lab/p.git"
    # a password holding '@' (not percent-encoded) goes whole
    out = redact_text("mysql://root:p@ss@w0rd-x@db:3306/x")
    assert "ss@w0rd" not in out and out.endswith("@db:3306/x")
    out = strip_url_credentials("https://host/x.git?private_token=abcdef123456")
    assert "abcdef123456" not in out


def test_configured_rules_from_pyproject_runrec_toml_and_environment(tmp_path):
    proj = tmp_path / "proj"
    (proj / "src").mkdir(parents=True)
    (proj / "pyproject.toml").write_text(
        "[tool.runrec.redact]\n"
        'secret_names = ["^corp_"]\n'
        'secret_values = ["acme-[0-9a-f]{16}"]\n'
        'not_secret = ["api_key_version", "*_token"]\n'
    )
    (proj / "runrec.toml").write_text('[redact]\nsecret_names = ["pin$"]\n')
    env = {
        "RUNREC_REDACT_VALUES": '["zz[0-9]{6}zz"]',
        "RUNREC_REDACT_NOT_SECRET": "sort_pass,data_key",
        "RUNREC_REDACT_NAMES": "^x_internal",
    }
    r = load_rules(str(proj / "src"), env)
    assert len(r.sources) == 5  # two files, three variables
    # extra names and values
    assert redact_value("corp_channel", "general", r) == REDACTED
    assert redact_value("door_pin", 1234, r) == REDACTED
    assert redact_value("x_internal_id", "abc", r) == REDACTED
    assert redact_value("note", "id acme-0123456789abcdef ok", r) == f"id {REDACTED} ok"
    assert redact_value("note", "zz123456zz", r) == REDACTED
    # names that are not secrets: built-in name rules step aside...
    assert redact_value("session_token", "abc", r) == "abc"
    assert redact_value("sort_pass", "x", r) == "x"
    # ...but never for a value with a credential's shape, nor for the user's own secret names
    tok = "gh" + "p_" + "b2" * 18
    assert redact_value("session_token", tok, r) == REDACTED
    assert redact_value("corp_token", "abc", r) == REDACTED
    # without the files and variables, the built-in rules only
    assert redact_value("session_token", "abc", load_rules(str(tmp_path), {})) == REDACTED
    assert redact_value("corp_channel", "general", load_rules(str(tmp_path), {})) == "general"


@pytest.mark.parametrize(
    "toml,match",
    [
        ('[tool.runrec.redact]\nsecret_name = ["x"]\n', "unknown keys"),
        ('[tool.runrec.redact]\nsecret_values = ["(unclosed"]\n', "not a valid regular"),
        ("[tool.runrec.redact]\nsecret_values = [1]\n", "list of non-empty strings"),
        ("[tool.runrec.redact\n", "Fix the TOML"),
    ],
)
def test_bad_rule_files_are_refused_clearly(tmp_path, toml, match):
    (tmp_path / "pyproject.toml").write_text(toml)
    with pytest.raises(ConfigError, match=match) as e:
        load_rules(str(tmp_path), {})
    assert str(tmp_path / "pyproject.toml") in str(e.value)


def test_a_bad_rule_refuses_the_submit_before_anything_is_written(tmp_path, monkeypatch):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "pyproject.toml").write_text('[tool.runrec.redact]\nsecret_values = ["(x"]\n')
    monkeypatch.chdir(proj)
    store = rr.Store(tmp_path / "store")
    ex = rr.Executor(backend="local", store=store, cwd=proj)
    with pytest.raises(ConfigError, match="secret_values"):
        ex.submit(len, "abc")
    assert list(store.run_ids()) == []
    monkeypatch.setenv("RUNREC_REDACT_NAMES", '["unclosed')
    monkeypatch.chdir(tmp_path)
    r = run_cli("submit", "--store", str(store.root), "--", "true", cwd=tmp_path)
    assert r.returncode == 1 and "RUNREC_REDACT_NAMES" in r.stderr and "Traceback" not in r.stderr


# ---------------------------------------------------------------------------------------------
# real runs, then every byte of the store
# ---------------------------------------------------------------------------------------------

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _contents(path: str) -> list[bytes]:
    """The raw bytes of a file, plus its decompressed / decoded forms."""
    with open(path, "rb") as f:
        raw = f.read()
    out = [raw]
    if raw.startswith(ZSTD_MAGIC):
        with zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(raw), read_across_frames=True
        ) as r:
            out.append(r.read())
    if raw.startswith(b"ARROW1"):
        import pyarrow.ipc

        table = pyarrow.ipc.open_file(path).read_all()
        out.append(json.dumps(table.to_pylist(), default=str).encode())
    return out


def _scan(paths: list[str], corpus: Corpus) -> dict[str, list[str]]:
    """{file: [labels of the secrets found in it]}"""
    found: dict[str, list[str]] = {}
    needles = {label: [n.encode() for n in s.needles()] for label, s in corpus.items.items()}
    for p in paths:
        blobs = _contents(p)
        for label, ns in needles.items():
            if any(n in b for n in ns for b in blobs):
                found.setdefault(p, []).append(label)
    return found


def _all_files(root: str) -> list[str]:
    out = []
    for d, _dirs, files in os.walk(root):
        out += [os.path.join(d, f) for f in files]
    return sorted(out)


def _job_with_secrets():
    """A job that receives secrets as arguments and in its environment (defined here so that
    cloudpickle ships it by value; it refers to nothing in this module)."""

    def train(lr, epochs=3, **config):
        import hashlib
        import json
        import os

        import runrec_cluster as rr

        run = rr.current_run()
        got = run.log_config({"access_token": os.environ["RUNREC_TEST_API_TOKEN"], "seed": 7})
        run.log_metrics({"acc": 0.5, "epochs": epochs})
        digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()
        # proof that the job got the real values (the record holds redacted ones)
        return {
            "config_sha256": digest,
            "token_sha256": hashlib.sha256(got["access_token"].encode()).hexdigest(),
            "lr": lr,
        }

    def connect(db, retries=1):
        raise ConnectionError(f"could not connect to {db} after {retries} tries")

    return train, connect


TOOL = """\
import hashlib, json, sys
print("argv sha256", hashlib.sha256(json.dumps(sys.argv[1:]).encode()).hexdigest())
"""


def test_no_secret_reaches_the_store(tmp_path, repo, monkeypatch):
    c = build_corpus()
    monkeypatch.chdir(repo)
    # the git remote carries a token
    remote = f"https://x-access-token:{c.used('github_classic_remote', 'git remote')}@github.com/lab/proj.git"
    git(repo, "remote", "add", "origin", remote)
    head = git(repo, "rev-parse", "HEAD").strip()
    data = tmp_path / "train.csv"
    data.write_text("x,y\n1,0\n2,1\n")
    data_digest = "sha256:" + hashlib.sha256(data.read_bytes()).hexdigest()

    # the environment: selected variables (captured, must be redacted) and others (never
    # captured); the job inherits all of them
    env = {
        "HF_TOKEN": c.used("huggingface_env", "env HF_TOKEN"),
        "RAY_REDIS_PASSWORD": c.used("env_redis_password", "env RAY_REDIS_PASSWORD"),
        "HF_ENDPOINT": f"https://mirror:{c.used('env_mirror_password', 'env HF_ENDPOINT url')}@hf-mirror.example.com",
        "RUNREC_NOTE": f"deploy with {c.used('github_classic_env', 'env RUNREC_NOTE text')}",
        "WANDB_API_KEY": c.used("wandb_env", "env WANDB_API_KEY"),
        "AWS_ACCESS_KEY_ID": c.used("aws_access_key_id_env", "env AWS_ACCESS_KEY_ID"),
        "AWS_SECRET_ACCESS_KEY": c.used("aws_secret_access_key_env", "env AWS_SECRET_ACCESS_KEY"),
        "RUNREC_TEST_API_TOKEN": c.used("generated_token", "run.log_config in the job"),
        "CUDA_VISIBLE_DEVICES": "0",
        "HF_HOME": "/scratch/hf-cache",
        "RUNREC_SECRETS_DIR": str(tmp_path / "private-secrets"),
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    env_only = {
        "huggingface_env",
        "env_redis_password",
        "env_mirror_password",
        "github_classic_env",
        "wandb_env",
        "aws_access_key_id_env",
        "aws_secret_access_key_env",
        "generated_token",
        "github_classic_remote",
    }

    run_id_value = layout.new_id()
    config = {
        # named secrets
        "aws_access_key_id": c.used("aws_access_key_id", "config value"),
        "aws_secret_access_key": c.used("aws_secret_access_key", "config value"),
        "service_account": json.loads(c.used("gcp_service_account", "config value (dict)")),
        "sa_json": c["gcp_service_account"],  # the same, as a JSON string under a plain name
        "storage": c.used("azure_connection_string", "config value"),
        "github_token": c.used("github_fine_grained", "config value"),
        "gitlab": {"url": "https://gitlab.example.com", "token": c.used("gitlab", "config value")},
        "slack_webhook_token": c.used("slack_bot", "config value"),
        "openai_api_key": c.used("openai", "config value"),
        "wandb_api_key": c.used("wandb", "config value"),
        "headers": {"Authorization": f"Bearer {c.used('jwt', 'config value')}"},
        "ssh_private_key": c.used("openssh", "config value"),
        "db_password": c.used("db_password", "config value"),
        # credential shapes under ordinary names
        "notes": f"keys: {c.used('anthropic', 'config text')} and {c.used('stripe_live', 'config text')}",
        "registries": [
            f"//registry.npmjs.org/:_authToken={c.used('npm', 'config list')}",
            f"pypi {c.used('pypi', 'config list')}",
        ],
        "mirror": f"https://{c.used('huggingface', 'config url')}@hf.example.com/models",
        "maps": c.used("google_api_key", "config value"),
        "tls_key": c.used("pem_rsa", "config value"),
        "db": _db_url(c["db_password"]),
        # ordinary values that must survive
        "data_path": "/data/imagenet/train",
        "base_commit": head,
        "parent_run": run_id_value,
        "data_digest": data_digest,
        "tokenizer": "bert-base-uncased",
        "max_tokens": 512,
        "eos_token": "</s>",
        "sort_key": "length",
        "num_passes": 3,
        "author": "alice",
        "partition": "s3://bucket/date=2024-01-01/split=train/part-0.parquet",
    }
    survivors = {
        k: config[k]
        for k in (
            "data_path",
            "base_commit",
            "parent_run",
            "data_digest",
            "tokenizer",
            "max_tokens",
            "eos_token",
            "sort_key",
            "num_passes",
            "author",
            "partition",
        )
    }
    train, connect = _job_with_secrets()
    store = rr.Store(tmp_path / "store")
    ex = rr.Executor(backend="local", store=store, cwd=repo)
    h_fn = ex.submit(
        train,
        0.1,
        inputs=[rr.Dataset(data)],
        tags={"registry_token": c.used("tag_token", "tag"), "team": "vision"},
        **config,
    )
    exc_pw = c.used("db_password_exc", "exception message in the job")
    h_fail = ex.submit(connect, f"postgresql://admin:{exc_pw}@db.internal/prod")

    tool = tmp_path / "tool.py"
    tool.write_text(TOOL)
    argv = [
        sys.executable,
        str(tool),
        "--lr",
        "0.1",
        f"--password={c.used('cli_password', 'command line --password=')}",
        "--token",
        c.used("cli_token", "command line --token"),
        "--api-key",
        c.used("openai_project", "command line --api-key"),
        "--aws-secret-access-key",
        c["aws_secret_access_key"],
        "--wandb-api-key",
        c["wandb"],
        "-H",
        f"Authorization: Bearer {c.used('bearer_opaque', 'command line header')}",
        "--db",
        _db_url(c.used("db_password_cmd", "command line url")),
        "--index-url",
        f"https://deploy:{c.used('pip_password', 'command line url')}@pypi.example.com/simple/",
        f"--notify=slack:{c['slack_bot']}",
        "--repo",
        f"https://{c.used('github_classic', 'command line url')}@github.com/lab/data.git",
        "--out",
        "/data/out",
    ]
    for label in ("aws_secret_access_key", "wandb", "slack_bot"):
        c.items[label].places.append("command line")
    h_cmd = ex.submit_command(argv, name="upload")

    rec_fn = h_fn.wait(timeout=180)
    rec_fail = h_fail.wait(timeout=180)
    rec_cmd = h_cmd.wait(timeout=180)
    assert rec_fn.state == rr.RunState.SUCCEEDED, rec_fn.failure
    assert rec_cmd.state == rr.RunState.SUCCEEDED, rec_cmd.failure
    assert rec_fail.state == rr.RunState.FAILED and "could not connect" in rec_fail.failure.message

    # the jobs ran with the real values (the digests of what they received)
    result = store.get_obj(rec_fn.result.blob)
    real_cfg = dict(config)
    assert (
        result["config_sha256"]
        == hashlib.sha256(json.dumps(real_cfg, sort_keys=True).encode()).hexdigest()
    )
    assert result["token_sha256"] == hashlib.sha256(c["generated_token"].encode()).hexdigest()
    with open(os.path.join(store.log_dir(h_cmd.run_id), "stdout.txt")) as f:
        assert hashlib.sha256(json.dumps(argv[2:]).encode()).hexdigest() in f.read()

    # readers and exports: the index, the JSON and OpenLineage exports, the CLI's output
    out_dir = tmp_path / "exports"
    out_dir.mkdir()
    outputs = []
    for args in (
        ["ls"],
        ["ls", "--json"],
        ["table", "--format", "json"],
        ["show", h_fn.run_id],
        ["show", h_cmd.run_id],
        ["show", h_fail.run_id],
        ["diff", h_fn.run_id, h_cmd.run_id],
        ["history", h_cmd.run_id],
    ):
        r = run_cli(*args, "--store", store.root, env={"COLUMNS": "250"})
        assert r.returncode == 0, (args, r.stderr)
        outputs.append(r.stdout + r.stderr)
    for rid in (h_fn.run_id, h_cmd.run_id, h_fail.run_id):
        for fmt in ("json", "openlineage"):
            o = out_dir / f"{rid}.{fmt}"
            r = run_cli("export", rid, "--format", fmt, "-o", str(o), "--store", store.root)
            assert r.returncode == 0, r.stderr
    cli_out = tmp_path / "cli-output.txt"
    cli_out.write_text("\n".join(outputs))

    files = _all_files(store.root) + _all_files(str(out_dir)) + [str(cli_out)]
    assert any(f.endswith(".arrow") for f in files), "the query index was not built"
    found = _scan(files, c)
    call_blobs = {
        layout.blob_path(store.root, r.entrypoint.call_blob)
        for r in (store.load(i) for i in store.run_ids())
        if r.entrypoint and r.entrypoint.call_blob
    }
    leaks = {p: labels for p, labels in found.items() if p not in call_blobs}
    in_calls = {p: labels for p, labels in found.items() if p in call_blobs}
    assert not leaks, f"secrets found outside the pickled calls: {leaks}"
    # the pickled calls hold placeholders, and the command line is not pickled at all: the
    # values were in files outside the store, now gone (docs/security.md)
    assert not in_calls, f"secrets found in the pickled calls: {in_calls}"
    assert rec_cmd.entrypoint.call_blob is None
    # what travels only in the environment or the git remote is in no file at all
    everywhere = {label for labels in found.values() for label in labels}
    assert not (everywhere & env_only), everywhere & env_only
    assert rec_fn.entrypoint.withheld and rec_fail.entrypoint.withheld == ["db"]
    assert len(rec_cmd.entrypoint.withheld) == sum(
        a != b for a, b in zip(argv, rec_cmd.entrypoint.argv, strict=True)
    )
    assert os.listdir(tmp_path / "private-secrets") == []

    # false positives: ordinary values survive, in the record and in the views
    fp_checked = 0
    for k, v in survivors.items():
        assert rec_fn.config[k].value == v, k
        fp_checked += 1
    assert rec_fn.config["lr"].value == 0.1 and rec_fn.config["seed"].value == 7
    assert rec_fn.config["access_token"].value == REDACTED
    assert rec_fn.config["gitlab"].value["url"] == "https://gitlab.example.com"
    fp_checked += 3
    assert (
        rec_fn.code.commit == head and rec_fn.code.remote_url == "https://github.com/lab/proj.git"
    )
    assert re.fullmatch(r"[a-z0-9-]+:[0-9a-f]{64}", rec_fn.inputs[0].digest)  # a dataset hash
    assert rec_fn.run_id in outputs[0] or rec_fn.run_id[:10] in outputs[0]
    fp_checked += 4
    assert rec_fn.tags == {"registry_token": REDACTED, "team": "vision"}
    fp_checked += 1
    assert rec_fn.launch_env.env_vars["CUDA_VISIBLE_DEVICES"] == "0"
    assert rec_fn.launch_env.env_vars["HF_HOME"] == "/scratch/hf-cache"
    assert rec_fn.node.env_vars["HF_HOME"] == "/scratch/hf-cache"
    assert rec_fn.launch_env.env_vars["HF_ENDPOINT"] == f"https://{REDACTED}@hf-mirror.example.com"
    assert "WANDB_API_KEY" not in rec_fn.launch_env.env_vars
    fp_checked += 4
    shown = rec_cmd.entrypoint.argv
    assert shown[2:4] == ["--lr", "0.1"] and shown[-2:] == ["--out", "/data/out"]
    assert rec_cmd.config["lr"].value == 0.1 and rec_cmd.config["out"].value == "/data/out"
    assert rec_cmd.config["db"].value == f"postgresql://{REDACTED}@db.internal:5432/experiments"
    fp_checked += 5
    assert "could not connect to postgresql://" in rec_fail.failure.message
    fp_checked += 1

    formats = sorted({s.fmt for s in c.items.values()})
    places = sorted({p for s in c.items.values() for p in s.places})
    assert all(s.places for s in c.items.values()), [
        s.label for s in c.items.values() if not s.places
    ]
    _write_results(
        "test_no_secret_reaches_the_store",
        "Fake secrets in real formats, injected into real local runs (function config, "
        "generated config, tags, environment, command line, git remote, exception message); every "
        "byte of every store file (zstd decompressed, Arrow index decoded), the exports and "
        "the CLI output scanned for each secret and slices of it.",
        secrets_in_corpus=len(c.items),
        formats=len(formats),
        format_names=formats,
        places_injected=len(places),
        place_names=places,
        needles_per_scan=sum(len(s.needles()) for s in c.items.values()),
        files_scanned=len(files),
        bytes_scanned=sum(os.path.getsize(p) for p in files),
        runs=3,
        leaks_found=len(leaks),
        call_blobs_holding_secrets=len(in_calls),
        command_line_items_withheld=len(rec_cmd.entrypoint.withheld),
        false_positive_values_checked=fp_checked,
        false_positives_found=0,
    )
