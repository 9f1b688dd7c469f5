"""The precision chosen for the machine (llama.training.precision): ``--dtype auto`` on CPUs with and
without native bfloat16 and on CUDA GPUs (all pretended: the capability, the feature list and the
timed probe are replaced), the warning for bfloat16 forced where it is emulated, what a run
records in ``run.json``, a resumed run keeping its dtype, the command line, and Muon's
orthogonalisation in the fast dtype."""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import TINY_RUN, make_text

import llama.training.loop
from llama.cli.main import build_parser
from llama.cli.main import main as cli_main
from llama.cli.train import train_config_from_args
from llama.training import precision
from llama.training.config import TrainConfig
from llama.training.optim import Muon, newton_schulz
from llama.training.precision import emulation_warning, fast_dtype, measure_bf16_slowdown, resolve_dtype

# A tiny run, as in tests/test_train.py; progress stays on, since the dtype line comes with it.
TINY = [*TINY_RUN, "--batch-size", "4", "--sample-tokens", "0", "--warmup-steps", "1", "--eval-every", "2"]
EMULATED = "this CPU (AVX2) has no native bfloat16: a bf16 matmul measured 31x slower than float32"


@pytest.fixture
def machine(monkeypatch):
    """``machine(capability, features, slowdown)`` makes this process see such a CPU: what
    ``torch.backends.cpu.get_cpu_capability()`` says, which bfloat16 features
    ``torch.cpu.get_capabilities()`` lists (``None``: the function is missing), and what the
    timed probe measures (a list that records each call). The cached answer is forgotten
    before and after."""
    probes = []

    def pretend(capability: str, features: list[str] | None, slowdown: float = 31.0) -> list:
        monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
        if features is None:
            monkeypatch.delattr(torch.cpu, "get_capabilities", raising=False)
        else:
            flags = {"avx2": True, "avx512_f": capability == "AVX512"}
            flags.update({name: name in features for name in ("amx_bf16", "avx512_bf16")})
            monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)

        def probe(*args, **kwargs):
            probes.append(slowdown)
            return slowdown

        monkeypatch.setattr(precision, "measure_bf16_slowdown", probe)
        precision._bf16_support.cache_clear()
        return probes

    yield pretend
    precision._bf16_support.cache_clear()


# ------------------------------------------------------------------------------- the resolver
def test_auto_is_float32_where_the_cpu_emulates_bfloat16(machine):
    probes = machine("AVX2", [])
    assert resolve_dtype("auto") == ("float32", f"auto: {EMULATED}")
    assert fast_dtype("cpu") == torch.float32
    resolve_dtype("auto", "cpu")
    assert probes == [31.0]  # measured once per process, not at every call


@pytest.mark.parametrize("capability, features", [("AVX512", ["avx512_bf16"]), ("AVX512", ["amx_bf16", "avx512_bf16"])])
def test_auto_is_bfloat16_where_the_cpu_has_bfloat16_instructions(machine, capability, features):
    machine(capability, features, slowdown=0.4)
    dtype, why = resolve_dtype("auto", "cpu")
    assert dtype == "bfloat16" and fast_dtype("cpu") == torch.bfloat16
    assert why == (f"auto: this CPU ({capability}, {' and '.join(features)}) computes bfloat16 natively: "
                   "a bf16 matmul measured 2.5x faster than float32")


def test_instructions_that_pytorch_does_not_use_are_not_native(machine):
    machine("AVX512", ["avx512_bf16"], slowdown=31.0)  # e.g. oneDNN held to AVX2 (ONEDNN_MAX_CPU_ISA=AVX2)
    dtype, why = resolve_dtype("auto")
    assert dtype == "float32" and "PyTorch does not use them here" in why and "31x slower" in why


def test_avx512_without_its_bfloat16_extension_is_not_native(machine):
    machine("AVX512", [], slowdown=1.5)  # Skylake-X, Cascade Lake: AVX-512 but no avx512_bf16
    assert resolve_dtype("auto")[0] == "float32"


@pytest.mark.parametrize("slowdown, dtype", [(0.5, "bfloat16"), (40.0, "float32")])
def test_a_cpu_that_lists_no_features_is_judged_by_the_measurement(machine, slowdown, dtype):
    probes = machine("DEFAULT", None, slowdown)  # a torch without torch.cpu.get_capabilities
    assert resolve_dtype("auto")[0] == dtype and probes == [slowdown]


@pytest.mark.parametrize("name, major, dtype", [("NVIDIA A100-SXM4-40GB", 8, "bfloat16"), ("Tesla T4", 7, "float32")])
def test_auto_on_cuda_asks_the_gpu_without_counting_emulation(monkeypatch, machine, name, major, dtype):
    machine("AVX2", [])

    def is_bf16_supported(including_emulation=True):  # as torch's: a T4 "supports" bf16 by emulating it
        return major >= 8 or including_emulation

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    chosen, why = resolve_dtype("auto", "cuda:0")
    assert chosen == dtype and name in why
    assert resolve_dtype("auto", "cpu")[0] == "float32"  # the CPU is asked apart


def test_a_dtype_given_is_kept_and_float32_needs_no_probe(machine):
    probes = machine("AVX2", [])
    assert resolve_dtype("float32") == ("float32", "as asked (--dtype float32)") and probes == []
    assert resolve_dtype("bfloat16") == ("bfloat16", f"as asked (--dtype bfloat16), although {EMULATED}")
    machine("AVX512", ["avx512_bf16"], slowdown=0.5)
    assert resolve_dtype("bfloat16") == ("bfloat16", "as asked (--dtype bfloat16)")


def test_a_resumed_run_keeps_its_dtype(machine):
    machine("AVX2", [])
    assert resolve_dtype("auto", saved="bfloat16") == (
        "bfloat16", f"kept: the run started in bfloat16; auto would choose float32 here: {EMULATED}")
    assert resolve_dtype("auto", saved="float32") == ("float32", "kept: the run started in float32")
    assert resolve_dtype("bfloat16", saved="bfloat16")[0] == "bfloat16"
    with pytest.raises(ValueError, match="--dtype float32: the run started with bfloat16"):
        resolve_dtype("float32", saved="bfloat16")


def test_an_unknown_dtype_is_refused():
    with pytest.raises(ValueError, match=r"--dtype must be one of auto, float32, bfloat16, got 'float16'"):
        resolve_dtype("float16")
    with pytest.raises(ValueError, match=r"^dtype must be auto, float32 or bfloat16, got 'fp32'"):
        TrainConfig(out="run", max_steps=1, dtype="fp32")


def test_the_warning_is_one_line_with_the_measured_slowdown(machine):
    machine("AVX2", [])
    warning = emulation_warning("bfloat16")
    assert warning == f"warning: --dtype bfloat16 is emulated here: {EMULATED}; --dtype auto would use float32"
    assert emulation_warning("float32") is None
    machine("AVX512", ["avx512_bf16"], slowdown=0.5)
    assert emulation_warning("bfloat16") is None


def test_the_probe_measures_without_touching_the_run_s_generator_or_threads():
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    slowdown = measure_bf16_slowdown(size=64, repeats=1)
    assert math.isfinite(slowdown) and slowdown > 0
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)


# ------------------------------------------------------------------------ a run and its folder
@pytest.fixture
def text(tmp_path):
    return make_text(tmp_path / "text.txt", 3000)


@pytest.fixture
def autocasts(monkeypatch):
    """The ``autocast_dtype`` of every training step the runs of the test take."""
    seen = []
    real = llama.training.loop.train_step

    def spy(*args):
        seen.append(args[6])
        return real(*args)

    monkeypatch.setattr(llama.training.loop, "train_step", spy)
    return seen


def run(capsys, *argv: str) -> str:
    assert cli_main(["train", *argv]) == 0
    return capsys.readouterr().err


@pytest.mark.parametrize("features, dtype, autocast", [([], "float32", None),
                                                       (["avx512_bf16"], "bfloat16", torch.bfloat16)])
def test_a_run_records_the_dtype_it_chose_and_why(tmp_path, capsys, text, machine, autocasts, features, dtype, autocast):
    machine("AVX512", features, slowdown=31.0 if dtype == "float32" else 0.5)
    out = tmp_path / "run"
    err = run(capsys, "--data", str(text), "--out", str(out), *TINY, "--max-steps", "2")
    _, why = resolve_dtype("auto")
    assert err.splitlines()[0] == f"dtype: {dtype} ({why})" and "warning" not in err
    saved = json.loads((out / "run.json").read_text())
    assert (saved["dtype"], saved["dtype_reason"]) == (dtype, why)
    assert autocasts == [autocast] * 2
    state = json.loads((out / "checkpoints" / "step-0000002" / "state.json").read_text())
    assert state["train_config"]["dtype"] == dtype


def test_bfloat16_forced_where_it_is_emulated_warns_in_one_line(tmp_path, capsys, text, machine, autocasts):
    machine("AVX2", [])
    err = run(capsys, "--data", str(text), "--out", str(tmp_path / "run"), *TINY, "--max-steps", "2",
              "--dtype", "bfloat16", "--no-progress")
    assert err == f"warning: --dtype bfloat16 is emulated here: {EMULATED}; --dtype auto would use float32\n"
    assert autocasts == [torch.bfloat16] * 2  # a warning, not a refusal


def test_a_resumed_run_keeps_the_dtype_it_started_with(tmp_path, capsys, text, machine, autocasts):
    out = tmp_path / "run"
    machine("AVX512", ["avx512_bf16"], slowdown=0.5)
    run(capsys, "--data", str(text), "--out", str(out), *TINY, "--max-steps", "2")
    machine("AVX2", [])  # the folder moved to a machine where auto means float32
    err = run(capsys, "--out", str(out), "--resume", "--max-steps", "4", "--dtype", "auto")
    assert err.splitlines()[0] == (f"dtype: bfloat16 (kept: the run started in bfloat16; auto would choose "
                                   f"float32 here: {EMULATED})")
    assert err.splitlines()[1].startswith("warning: --dtype bfloat16 is emulated here")
    assert autocasts == [torch.bfloat16] * 4
    assert json.loads((out / "run.json").read_text())["dtype"] == "bfloat16"
    assert cli_main(["train", "--out", str(out), "--resume", "--max-steps", "6", "--dtype", "float32"]) == 2
    assert "--dtype 'float32' (the run used 'bfloat16')" in capsys.readouterr().err


def test_a_run_json_from_before_dtype_auto_resumes_in_float32(tmp_path, capsys, text, machine, autocasts):
    out = tmp_path / "run"
    machine("AVX512", ["avx512_bf16"], slowdown=0.5)
    run(capsys, "--data", str(text), "--out", str(out), *TINY, "--max-steps", "2", "--dtype", "float32")
    saved = json.loads((out / "run.json").read_text())
    del saved["dtype"], saved["dtype_reason"]  # float32 was the default then, and not always written
    (out / "run.json").write_text(json.dumps(saved))
    err = run(capsys, "--out", str(out), "--resume", "--max-steps", "4")
    assert err.splitlines()[0].startswith("dtype: float32 (kept: the run started in float32; auto would choose bfloat16")
    assert autocasts == [None] * 4


# ------------------------------------------------------------------------------- the command line
def test_the_command_line_takes_auto_and_makes_it_the_default():
    parser = build_parser()
    cfg, _, given = train_config_from_args(parser.parse_args(["train", "--out", "r", "--max-steps", "1"]))
    assert cfg.dtype == "auto" and "dtype" not in given
    cfg, _, given = train_config_from_args(parser.parse_args(["train", "--out", "r", "--max-steps", "1",
                                                              "--dtype", "auto"]))
    assert cfg.dtype == "auto" and "dtype" in given
    assert parser.parse_args(["finetune", "--base", "b", "--out", "r", "--dtype", "auto"]).dtype == "auto"


@pytest.mark.parametrize("command", [["train", "--out", "r", "--max-steps", "1"], ["finetune", "--base", "b", "--out", "r"]])
def test_a_garbage_dtype_is_refused_naming_the_flag(capsys, command):
    with pytest.raises(SystemExit) as exit_:
        cli_main([*command, "--dtype", "fp8"])
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert exit_.value.code == 2
    assert len(errors) == 1 and errors[0].startswith(f"llama {command[0]}: error: argument --dtype: invalid choice: 'fp8'")
    assert all(name in errors[0] for name in ("auto", "float32", "bfloat16"))


# ------------------------------------------------------------------------- Muon's orthogonalisation
def written_out(g: torch.Tensor, steps: int = 5, a=3.4445, b=-4.7750, c=2.0315) -> torch.Tensor:
    """Newton-Schulz as the chapter writes it, in float64: X <- aX + b(XX^T)X + c(XX^T)^2 X."""
    x = g.double().T if g.size(0) > g.size(1) else g.double()
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + b * gram @ x + c * gram @ gram @ x
    return x.T if g.size(0) > g.size(1) else x


@pytest.mark.parametrize("shape", [(16, 40), (40, 16)])
def test_newton_schulz_in_float32_is_the_written_out_iteration(shape):
    g = torch.randn(*shape, generator=torch.Generator().manual_seed(5))
    ours = newton_schulz(g, dtype=torch.float32)
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), written_out(g), atol=1e-5)
    rough = newton_schulz(g, dtype=torch.bfloat16)  # the same iteration, rounded to 8 bits
    assert rough.dtype == torch.bfloat16 and torch.allclose(rough.double(), written_out(g), atol=0.05)
    assert not torch.equal(rough.float(), ours)


@pytest.mark.parametrize("features, dtype", [([], torch.float32), (["avx512_bf16"], torch.bfloat16)])
def test_muon_orthogonalises_in_the_dtype_that_is_fast_here(machine, features, dtype):
    machine("AVX512", features, slowdown=31.0 if features == [] else 0.5)
    g = torch.randn(24, 12, generator=torch.Generator().manual_seed(6))
    assert newton_schulz(g).dtype == dtype
    p = torch.nn.Parameter(torch.zeros(24, 12))
    p.grad = g.clone()
    Muon([{"params": [p], "muon": True}], lr=0.1, weight_decay=0.0, nesterov=False).step()
    # the first step moves by -lr * NS(0.05 g) (the momentum starts at 0), scaled by sqrt(24 / 12)
    for candidate in (torch.float32, torch.bfloat16):
        expected = -0.1 * math.sqrt(2) * newton_schulz(0.05 * g, dtype=candidate).float()
        assert torch.allclose(p.detach(), expected, atol=1e-7) == (candidate == dtype)
