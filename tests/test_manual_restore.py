"""The manual restore in docs/operations.md works as written: its blocks are run by bash,
command for command, in a backup's folder fetched from storage, with nothing of this
project on the way. The restored database is then compared with the manifest."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from flows.backup import backup_database
from tasks import backups, postgres
from tasks.config import REPO_ROOT, load_environment
from tasks.storage import open_storage

OPERATIONS = REPO_ROOT / "docs" / "operations.md"


def doc_block(kind: str) -> str:
    """The fenced sh block that follows `<!-- manual-restore:<kind> ... -->`."""
    m = re.search(rf"<!-- manual-restore:{kind}\b[^>]*-->\n```sh\n(.*?)```", OPERATIONS.read_text(), re.S)
    assert m, f"docs/operations.md has no manual-restore:{kind} block"
    return m.group(1)


def fetch_folder(storage: Any, database: str, backup_id: str, into: Path) -> None:
    """What `aws s3 cp --recursive` of the backup's folder does."""
    prefix = backups.backup_prefix(database, backup_id)
    for key in storage.list_keys(prefix):
        path = into / key.removeprefix(prefix)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as fh:
            for chunk in storage.iter_chunks(key):
                fh.write(chunk)


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_the_manual_restore_in_the_docs_works_as_written(make_environment: Any, tmp_path: Path,
                                                         compression: str) -> None:
    def edit(doc: dict[str, Any]) -> None:
        doc["databases"]["fleet"]["compression"] = compression

    env = make_environment(f"by-hand-{compression}", edit)
    backup_id = backup_database(env, "fleet")["backup_id"]
    cfg = load_environment(env).database("fleet")
    storage = open_storage(cfg.storage)
    fetch_folder(storage, "fleet", backup_id, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [backups.MANIFEST, backups.CUSTOM_FILE + (".zst" if compression == "zstd" else "")])

    server = postgres.Server.from_dsn(cfg.dsn.resolve())
    target = f"by_hand_{compression}"
    postgres.drop_database(server, target)
    libpq = server.env(target)
    shell_env = {
        "PATH": f"{Path(postgres.find_tool('pg_restore', 15)).parent}:{os.environ['PATH']}",
        "TARGET_DB": target,
        **{k: libpq[k] for k in ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD") if k in libpq},
    }
    try:
        done = subprocess.run(["bash", "-euo", "pipefail", "-c", doc_block(compression)], cwd=tmp_path,
                              env=shell_env, capture_output=True, text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stderr
        assert "OK" in done.stdout  # sha256sum -c
        manifest = backups.load_manifest(storage, "fleet", backup_id)
        with postgres.connect(server, target) as conn:
            assert postgres.row_counts(conn) == manifest.row_counts
        assert sum(manifest.row_counts.values()) > 0
        assert not (tmp_path / backups.CUSTOM_FILE).exists() or compression == "gzip"
    finally:
        postgres.drop_database(server, target)
