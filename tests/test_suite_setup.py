"""How bin/test runs the suite: the tests that share a costly fixture stay on one worker."""

import pytest


def test_grouped_tests_carry_their_group_where_the_scheduler_reads_it(request):
    # --dist loadgroup schedules by the group that pytest-xdist appends to each test's id. It
    # appends none when conftest's marks come after its hook, or when pytest keeps ids where it
    # cannot append (9.2: pytest-xdist issue 1386): every worker then builds every shared
    # fixture, and nothing else fails.
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not a --dist loadgroup worker (bin/test runs the suite on one)")
    grouped = [item for item in request.session.items if item.get_closest_marker("xdist_group")]
    if not grouped:
        pytest.skip("no test of this run uses a shared fixture")
    lost = [item.nodeid for item in grouped if "@" not in item.nodeid]
    assert not lost, (f"pytest {pytest.__version__}: {len(lost)} tests lost their group "
                      f"({lost[0]}): conftest's hook must run first (tryfirst), and pytest be "
                      "the one setup.cfg pins")
