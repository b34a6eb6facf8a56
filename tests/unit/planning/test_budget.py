"""The precision choice from probe timings (the probe replaced by fixed step times)."""
from medexp.planning.budget import BF16_GAIN, Throughput, faster_precision


def timed(seconds: dict[str, float]):
    def measure(precision: str) -> Throughput:
        return Throughput(step_s=seconds[precision], augment_s=0.0, infer_s=0.0, batch=2, size=(40, 56, 40))
    return measure


def test_bfloat16_autocast_only_where_the_probe_steps_clearly_faster_with_it():
    planned = faster_precision(timed({"32": 2.0, "bf16-mixed": 1.0}))
    assert planned.value == "bf16-mixed" and "2 s/step in float32" in planned.reason
    assert faster_precision(timed({"32": 1.0, "bf16-mixed": 1.0 / (BF16_GAIN - 0.05)})).value == 32
    assert faster_precision(timed({"32": 1.0, "bf16-mixed": 1.3})).value == 32
