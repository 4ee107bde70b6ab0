"""HttpApp.route: OIP paths to handlers, the same however often and however many paths it has seen."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from polystack.server.http import HttpApp, Response


def app() -> HttpApp:
    return HttpApp(SimpleNamespace(log_settings=None), max_body_bytes=1 << 20)  # type: ignore[arg-type]


def test_a_path_routes_the_same_every_time_among_many_others() -> None:
    http = app()
    try:
        for round_ in range(2):
            for i in range(3000):  # more paths than the routes kept
                handler, args = http.route(b"POST", f"/v2/models/m{i}/versions/{round_ + 1}/infer")  # type: ignore[misc]
                assert handler == http.infer and args == [f"m{i}", str(round_ + 1)]
        handler, args = http.route(b"POST", "/v2/models/a%2Fb/infer")  # type: ignore[misc]
        assert handler == http.infer and args == ["a/b", ""]
        assert http.route(b"GET", "/v2/models/a%2Fb/ready")[0] == http.model_ready  # type: ignore[index]
    finally:
        http.close()


def test_errors_are_answered_each_time_and_never_stand_for_a_route() -> None:
    http = app()
    try:
        for _ in range(2):
            wrong: Any = http.route(b"GET", "/v2/models/m/infer")
            assert isinstance(wrong, Response) and wrong.status == 405
            missing: Any = http.route(b"GET", "/v3/nothing")
            assert isinstance(missing, Response) and missing.status == 404
        assert http._routes == {}  # an error is not kept: each comes from routing afresh
        handler, _ = http.route(b"POST", "/v2/models/m/infer")  # type: ignore[misc]
        assert handler == http.infer
    finally:
        http.close()


def test_long_paths_are_routed_but_not_kept() -> None:
    http = app()
    try:
        name = "m" * 60_000
        for _ in range(2):
            handler, args = http.route(b"GET", f"/v2/models/{name}/ready")  # type: ignore[misc]
            assert handler == http.model_ready and args == [name, ""]
        http.route(b"GET", "/v2/models/short/ready")
        assert sum(len(path) for _, path in http._routes) < 1_000  # the long path took no room
    finally:
        http.close()
