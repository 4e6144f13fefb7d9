"""The reward worker subprocess behind :class:`vt_ray.rewards.guard.ProcessGuard`.

Protocol: one JSON object per line. After start it writes ``{"ready": true}``; then for each request
``{"path", "response", "target"}`` it writes ``{"ok": true, "value": v}`` or ``{"ok": false, "error": msg}``.
The user's function may print: fd 1 is redirected to stderr so only the protocol uses the original stdout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from vt_ray.rewards.guard import RewardFn, as_reward_value, resolve_import_path
from vt_ray.rewards.target import RewardTarget


def _protocol_stream() -> Any:
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything else written to stdout (print, C extensions) goes to stderr
    sys.stdout = sys.stderr
    return out


def main() -> int:
    out = _protocol_stream()
    functions: dict[str, RewardFn] = {}
    for path in sys.argv[1:]:  # import up front; a failure is reported by each call to that reward
        try:
            functions[path] = resolve_import_path(path)
        except Exception as err:  # noqa: BLE001
            print(f"reward worker: cannot load {path}: {err}", file=sys.stderr)
    out.write(json.dumps({"ready": True}) + "\n")
    for line in sys.stdin:
        try:
            request = json.loads(line)
            path = request["path"]
            if path not in functions:
                functions[path] = resolve_import_path(path)
            value = as_reward_value(functions[path](request["response"], RewardTarget.from_json(request["target"])))
            reply: dict[str, Any] = {"ok": True, "value": value}
        except BaseException as err:  # noqa: BLE001 - user code may raise anything; report, keep serving
            reply = {"ok": False, "error": f"{type(err).__name__}: {err}"[:500]}
        out.write(json.dumps(reply) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
