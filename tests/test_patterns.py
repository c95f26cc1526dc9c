"""allocate_pattern against Megatron-LM's allocate_layers, and invalid patterns in ModelConfig."""
import pytest

from mambakit.config import ModelConfig
from mambakit.patterns import allocate_pattern, pattern_counts

HYBRID_8B = "M-M-M--M-M*-M-M-M-M--M*-M-M-M-M-M*--M-M-M-M-M*-M--M-M-M-"


def test_published_8b_pattern():
    assert allocate_pattern(56, 0.08, 0.5) == HYBRID_8B
    assert pattern_counts(HYBRID_8B) == {"M": 24, "*": 4, "-": 28}


# Megatron's tests/unit_tests/ssm/test_mamba_hybrid_layer_allocation.py: with ratios > 0 and an
# override pattern, allocate_layers raises unless the override has the same counts as its own
# allocation, so these override patterns fix the counts of the rule's output.
@pytest.mark.parametrize("n,att,mlp,override", [
    (8, 0.25, 0.25, "MM*-MM*-"),
    (8, 0.5, 0.25, "M**-M**-"),
])
def test_megatron_override_cases_have_matching_counts(n, att, mlp, override):
    assert pattern_counts(allocate_pattern(n, att, mlp)) == pattern_counts(override)


def test_megatron_mismatched_override_case_differs():
    # Megatron expects (8, 0.5, 0.25, "M*--M**-") to raise: its counts differ from the rule's.
    assert pattern_counts(allocate_pattern(8, 0.5, 0.25)) != pattern_counts("M*--M**-")


# Megatron checks the counts as int(ratio * n + 0.5); (30, 0, 0) is all SSM.
@pytest.mark.parametrize("n,att,mlp", [(30, 0.0, 0.0), (48, 0.5, 0.2), (9, 0.0, 0.0), (10, 0.3, 0.2),
                                       (48, 0.1, 0.0), (10, 0.0, 0.3), (24, 0.08, 0.5), (48, 0.08, 0.5)])
def test_counts_follow_the_ratios(n, att, mlp):
    counts = pattern_counts(allocate_pattern(n, att, mlp))
    assert counts["*"] == int(att * n + 0.5)
    assert counts["-"] == int(mlp * n + 0.5)
    assert counts["M"] == int((1 - att - mlp) * n + 0.5)


@pytest.mark.parametrize("n,att,mlp,expected", [
    # Hand-traced through the rule (sections of n_ssm / (n_att + 1) SSM layers).
    (10, 0.2, 0.0, "MMM*MM*MMM"),
    (10, 0.0, 0.3, "MM-MMM-MM-"),
    (8, 0.25, 0.25, "MM*-M*M-"),
    (24, 0.08, 0.5, "M-M-M--*M-M-M-M-*M--M-M-"),
])
def test_exact_patterns(n, att, mlp, expected):
    assert allocate_pattern(n, att, mlp) == expected


def test_attention_never_first_or_last():
    # Holds whenever each of the (attention + 1) SSM sections gets at least one layer.
    for n in range(2, 60):
        for att in (0.05, 0.1, 0.2, 0.3):
            n_att = round(n * att)
            if (n - n_att) / (n_att + 1) < 1:
                continue
            p = allocate_pattern(n, att, 0.0)
            assert p[0] == "M" and p[-1] == "M", (n, att, p)
            assert p.count("*") == n_att


@pytest.mark.parametrize("args,match", [
    ((0, 0.1, 0.1), "n_layer"),
    ((8.0, 0.1, 0.1), "n_layer"),
    ((8, -0.1, 0.1), "attention_ratio"),
    ((8, 0.1, 1.5), "mlp_ratio"),
    ((8, 0.6, 0.6), "<= 1"),
])
def test_bad_arguments(args, match):
    with pytest.raises(ValueError, match=match):
        allocate_pattern(*args)


@pytest.mark.parametrize("kw,match", [
    (dict(n_layer=4, layer_pattern="M*X-"), "unknown characters"),
    (dict(n_layer=4, layer_pattern=""), "non-empty"),
    (dict(n_layer=5, layer_pattern="M*-M"), "4 layers but n_layer is 5"),
    (dict(n_layer=2, layer_pattern="M*", attention=dict(n_heads=3)), "divisible"),
    (dict(n_layer=2, layer_pattern="M-", mlp=dict(activation="tanh")), "activation"),
    (dict(n_layer=2, layer_pattern="M*", attention=dict(n_heads=4, rotary_fraction=1.5)), "rotary_fraction"),
])
def test_invalid_patterns_raise(kw, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig(d_model=64, vocab_size=32, **kw)
