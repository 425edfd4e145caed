"""views.verdict.metric_check: bit-identical, within a tolerance, different, missing."""

from runrec_cluster.views.verdict import metric_check


def test_bit_identical_means_the_same_64_bits():
    assert metric_check("m", 0.1 + 0.2, 0.1 + 0.2, 0).verdict == "bit-identical"
    assert metric_check("m", 0.30000000000000004, 0.3, 0).verdict == "different"
    assert metric_check("m", 0.0, -0.0, 0).verdict == "different"  # equal, not the same bits
    assert metric_check("m", float("nan"), float("nan"), 0).verdict == "bit-identical"
    assert metric_check("m", 3, 3, 0).verdict == "bit-identical"
    assert metric_check("m", 3, 3.0, 0).verdict == "different"  # int vs float: not the same


def test_within_rtol():
    c = metric_check("m", 1.0, 1.0 + 1e-9, 1e-6)
    assert c.verdict == "within-rtol" and 0 < c.rel_diff < 1e-6
    assert metric_check("m", 1.0, 1.1, 1e-6).verdict == "different"
    assert metric_check("m", 1.0, 1.0 + 1e-9, 0).verdict == "different"


def test_missing_and_non_numbers():
    assert metric_check("m", None, 1.0, 0).verdict == "missing"
    assert metric_check("m", "a", "a", 0).verdict == "bit-identical"
    assert metric_check("m", "a", "b", 0).verdict == "different"
