"""JavaScript clients against a live service, run by Node's own test runner.

`examples/js/test/clients.test.mjs` drives LangChain's `RemoteRunnable`
(`@langchain/core@0.3.x`, with `options.headers`) through invoke, stream and
streamEvents on every chain, and the example fetch + eventsource-parser client.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "js"


def test_js_clients_invoke_and_stream_every_chain(service_url: str, mint: Callable[..., str]) -> None:
    node = shutil.which("node")
    assert node is not None, "node is missing: run `bash scripts/install.sh --test`"
    assert (EXAMPLES / "node_modules" / "@langchain" / "core").is_dir(), "run `bash scripts/install.sh --test`"
    result = subprocess.run(
        [node, "--test", "--test-reporter=spec", "test/"],
        cwd=EXAMPLES, capture_output=True, text=True, timeout=300,
        env={**os.environ, "CRM_URL": service_url, "CRM_TOKEN": mint(roles=("rep",))},
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    assert "# fail 0" in result.stdout or "ℹ fail 0" in result.stdout, result.stdout[-3000:]
