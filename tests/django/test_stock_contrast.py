"""What the adapter changes: the same request under stock Django."""

from __future__ import annotations

import pytest
from conftest import Serve
from loopshare_example import probe


@pytest.mark.usefixtures("probes")
def test_stock_django_runs_middleware_view_and_signals_on_separate_loops(
    serve: Serve,
) -> None:
    served = serve("/async/", probe_id="stock")
    served.body()
    served.close()
    loops = {event["where"]: event["loop"] for event in probe.events("stock")}
    # request_started, the outer middleware, the view (with the inner
    # middleware), request_finished: one loop each.
    assert len(set(loops.values())) >= 3
