"""Helpers shared by the test modules: random models, the book's example collector, console blocks,
and the one rule for optional tools (skip for a reader, fail in CI)."""

from __future__ import annotations

import contextlib
import doctest
import importlib
import importlib.util
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from llama import ModelConfig, Transformer
from llama.cli.main import main
from llama.formats.load import save_model

REPO = Path(__file__).resolve().parent.parent
# The timeout of a test's subprocess only stops one that hangs: a run of seconds can take minutes on
# a loaded 2-core machine, and must not fail there.
HANG_SECONDS = 600
# The browser's waits (page loads, typesetting, search), likewise a hang guard only: a page that is
# slow on a loaded 2-core machine must still pass.
HANG_MS = 120_000

def random_model(config: ModelConfig, seed: int = 0, *, random_gains: bool = True,
                 weights_std: float | None = None) -> Transformer:
    """A seeded model in eval mode.

    ``random_gains``: the norm gains drawn from U(0.5, 1.5) (they start at 1, which would hide a
    swapped norm). ``weights_std``: every other weight drawn from N(0, weights_std), larger than the
    training init (0.08 makes a greedy choice clear-cut, and weights that quantize like trained ones).
    """
    torch.manual_seed(seed)
    model = Transformer(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                if random_gains:
                    p.uniform_(0.5, 1.5)
            elif weights_std is not None:
                p.normal_(0.0, weights_std)
    return model


# A tiny training run: 2 layers, 32 wide, byte tokens, one thread so results do not depend on the
# machine. The tests add what they vary (of a flag given twice, argparse keeps the last).
TINY_RUN = ["--model", "tiny", "--tokenizer", "bytes", "--block-size", "32", "--threads", "1", "--eval-tokens", "256",
            "--sample-tokens", "8", "--warmup-steps", "3"]

# ``llama COMMAND FLAGS`` (train, finetune, sft, dpo or rl) that SIGKILLs itself after optimizer step
# STEP: python -c KILLED_RUN STEP COMMAND FLAGS. SIGKILL runs no cleanup (no finally, no atexit), like
# a crash or the out-of-memory killer.
KILLED_RUN = """
import importlib, os, signal, sys
from llama.cli.main import build_parser

def kill_at(step):
    if step == int(sys.argv[1]):
        os.kill(os.getpid(), signal.SIGKILL)

command = sys.argv[2]
module = importlib.import_module(f"llama.cli.{command}")
args = build_parser().parse_args(sys.argv[2:])
if command in ("dpo", "rl"):  # as `llama dpo` and `llama rl` run them: the stage's own loop
    from llama.cli.common import stage_config_from_args
    from llama.posttraining.stage import run_stage
    cfg, resume, given = stage_config_from_args(args, getattr(module, f"{command.upper()}_DEFAULTS"))
    run_stage(cfg, resume=resume, given=given, on_step=kill_at)
else:
    from llama.training.loop import train
    cfg, resume, given = getattr(module, f"{command}_config_from_args")(args)
    # As `llama sft` runs it: the loop fed conversations.
    source = None
    if command == "sft":
        from llama.posttraining.sft import SFTData
        source = SFTData()
    train(cfg, resume=resume, given=given, on_step=kill_at, source=source)
"""


def byte_level_base(folder: Path) -> Path:
    """A small byte-level model saved as ``llama train`` leaves one: the model with its tokenizer beside it."""
    from llama.tokenizers.bpe import BPETokenizer

    save_model(random_model(ModelConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=256, max_seq_len=64)),
               folder)
    BPETokenizer([]).save(folder / "tokenizer.json")
    return folder


def chat_base(folder: Path) -> Path:
    """A small byte-level chat model, as ``llama sft`` leaves one: the chat tokens in its tokenizer
    and rows for them in the model (untrained: what the stages after SFT start from, in the tests)."""
    from llama.formats.load import load_model
    from llama.posttraining.chat import CHAT_TOKENS
    from llama.posttraining.special_tokens import add_special_tokens, resize_vocab, save_tokenizer
    from llama.tokenizers.bpe import BPETokenizer

    byte_level_base(folder)
    save_model(resize_vocab(load_model(folder), 256 + len(CHAT_TOKENS)), folder)
    save_tokenizer(add_special_tokens(BPETokenizer([]), CHAT_TOKENS), folder / "tokenizer.json")
    return folder


def whole_and_killed(tmp_path: Path, command: str, flags: list[str], step: int) -> Path:
    """``llama COMMAND FLAGS`` run twice side by side: to its end in ``tmp_path/whole``, and in
    ``tmp_path/killed`` killed by SIGKILL after optimizer step ``step``; returns the killed run's folder."""
    commands = {"whole": ["-m", "llama.cli.main", command], "killed": ["-c", KILLED_RUN, str(step), command]}
    procs = [subprocess.Popen([sys.executable, *argv, "--out", str(tmp_path / name), *flags], cwd=REPO,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, argv in commands.items()]
    (_, err_w), (_, err_k) = procs[0].communicate(timeout=HANG_SECONDS), procs[1].communicate(timeout=HANG_SECONDS)
    assert procs[0].returncode == 0, err_w
    assert procs[1].returncode == -9, err_k  # died by SIGKILL, not by finishing
    return tmp_path / "killed"


def assert_same_checkpoint(whole: Path, resumed: Path) -> None:
    """The weights and the optimizer state (generators included) of two training checkpoints are bit-identical."""
    from safetensors.torch import load_file

    for name in ("model.safetensors", "optimizer.safetensors"):
        a, b = load_file(whole / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k} differs after resume"


def load_module(name: str, path: Path):
    """The Python file ``path`` (a benchmark, a hook) imported as the module ``name``."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_book_collection():
    """A second copy of the root conftest.py (pytest loads it as a plugin) to call its parser directly."""
    return load_module("_book_collection", REPO / "conftest.py")


def load_listings():
    """hooks/listings.py, the MkDocs hook that renders library listings, to call it directly."""
    return load_module("_book_listings", REPO / "hooks" / "listings.py")


def console_blocks(markdown: str) -> list[list[tuple[str, str]]]:
    """Each ```console block as a list of (command, expected output) pairs."""
    blocks = []
    for block in re.findall(r"```console\n(.*?)```", markdown, flags=re.S):
        steps: list[tuple[str, str]] = []
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], ""))
            else:
                command, out = steps[-1]
                steps[-1] = (command, out + line + "\n")
        blocks.append(steps)
    return blocks


def run_console_blocks(markdown: str, capsys) -> None:
    """Run every command of every block in the current folder; ``...`` in the output matches anything."""
    blocks = console_blocks(markdown)
    assert blocks, "no console block found"
    checker = doctest.OutputChecker()
    for steps in blocks:
        for command, expected in steps:
            argv = shlex.split(command)
            assert argv[0] == "llama", command
            assert main(argv[1:]) == 0, command
            got = capsys.readouterr().out
            assert checker.check_output(expected, got, doctest.ELLIPSIS), f"{command}\nexpected:\n{expected}\ngot:\n{got}"


def pb_varint(value: int) -> bytes:
    """Protobuf's base-128 varint, written independently of llama.tokenizers.protobuf (which only reads)."""
    out = bytearray()
    while True:
        out.append((value & 0x7F) | (0x80 if value > 0x7F else 0))
        value >>= 7
        if not value:
            return bytes(out)


def pb_field(number: int, value: int | bytes) -> bytes:
    """One protobuf field: an int as a varint (wire type 0), bytes length-prefixed (wire type 2)."""
    if isinstance(value, int):
        return pb_varint(number << 3) + pb_varint(value)
    return pb_varint(number << 3 | 2) + pb_varint(len(value)) + value


NOBODY = 65534

# The interpreter starts as this user and imports every module of the package before it becomes
# nobody: nobody may not read the interpreter's own files where root installed it (under /root,
# say), and the package imports some modules only when a command runs. Only the effective ids
# change, in a process of its own: nothing else of the test run ever runs as nobody.
_AS_NOBODY = """import importlib, os, pkgutil, sys
import encodings.ascii, encodings.latin_1  # looked up by name when a file is opened with them
import torch._dynamo  # imported by the first initialisation on torch.device("meta") (llama.formats.load's skeleton)
import llama
for module in pkgutil.walk_packages(llama.__path__, "llama."):
    if not module.name.endswith(".__main__"):  # running it would run the command line
        importlib.import_module(module.name)
if os.geteuid() == 0:
    os.setgroups([])
    os.setegid({nobody})
    os.seteuid({nobody})
"""


def run_as_nobody(code: str, *args: str) -> subprocess.CompletedProcess:
    """Run the Python ``code`` (``sys.argv[1:]`` being ``args``) in a fresh interpreter as user 65534
    (nobody) when running as root, who may read and write any file; as another user, as that user.

    The paths involved must lie where nobody may go: pytest's tmp_path is under a folder only its
    owner may enter.
    """
    program = _AS_NOBODY.format(nobody=NOBODY) + code
    return subprocess.run([sys.executable, "-c", program, *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=HANG_SECONDS)


_EACH_COMMAND = """import contextlib, io, json
from llama.cli.main import main
results = []
for argv in json.loads(sys.argv[1]):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            status = main(argv)
        except SystemExit as exit:
            status = exit.code
    results.append([status, err.getvalue()])
print(json.dumps(results))
"""


def llama_as_nobody_each(argvs: list[list[str]]) -> list[tuple[int, str]]:
    """``llama ARGV`` for each of ``argvs``, one after the other in one interpreter run as nobody
    (:func:`run_as_nobody`): the exit code and the standard error of each. Starting that interpreter
    (it imports every module first) takes longer than a command that fails at once."""
    proc = run_as_nobody(_EACH_COMMAND, json.dumps(argvs))
    assert proc.returncode == 0 and proc.stdout, proc.stderr[-3000:]
    return [(status, err) for status, err in json.loads(proc.stdout.splitlines()[-1])]


# --- optional tools: skipped where a reader lacks them, required where CI says so ------------------

REQUIRE_ALL = "LLAMA_REQUIRE_ALL"


def unavailable(reason: str, fix: str) -> None:
    """Skip the calling test for ``reason``, or fail it when ``LLAMA_REQUIRE_ALL=1`` (.ci/run sets it).

    A reader without transformers, a C++ compiler, Chromium or the data folder still gets a green
    run of everything else, with each skip and its reason listed (pytest's ``-ra``); CI must run
    every test, so there the same absence is a failure.
    """
    if os.environ.get(REQUIRE_ALL) == "1":
        pytest.fail(f"{reason}, and {REQUIRE_ALL}=1 requires every test to run ({fix})", pytrace=False)
    pytest.skip(f"{reason} ({fix})")


def require_module(name: str):
    """The module ``name`` (e.g. transformers), or skip the calling test if it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        unavailable(f"{name} is not installed", "`make install` installs it from requirements-dev.txt")


# Code that runs torch.compile or AOTInductor, directly or through CompiledDecoder or ExportedDecoder.
COMPILES = re.compile(r"\b(?:Compiled|Exported)Decoder\(|\btorch\.compile\(")


def cpp_compiler() -> str | None:
    """The C++ compiler torch.compile's Inductor would find (its own search list, ``$CXX`` first), or None."""
    from torch._inductor import config

    names = config.cpp.cxx if isinstance(config.cpp.cxx, (list, tuple)) else (config.cpp.cxx,)
    return next((path for name in names if name and (path := shutil.which(name))), None)


def require_cpp_compiler() -> str:
    """Skip the calling test when torch.compile has no C++ compiler to build its kernels with."""
    compiler = cpp_compiler()
    if compiler is None:
        unavailable("no C++ compiler found for torch.compile", "install g++ or set CXX")
    return compiler


def require_program(name: str, fix: str) -> str:
    path = shutil.which(name)
    if path is None:
        unavailable(f"{name} not found", fix)
    return path


def shared_data_dir() -> Path:
    """The folder with the reference artifacts (``LLAMA_DATA_DIR``, default ``../shared/data``)."""
    return Path(os.environ.get("LLAMA_DATA_DIR", REPO.parent / "shared" / "data"))


def require_shared_file(name: str) -> Path:
    path = shared_data_dir() / name
    if not path.is_file():
        unavailable(f"{name} not found in {shared_data_dir()}", "set LLAMA_DATA_DIR to the folder that has it")
    return path


@contextlib.contextmanager
def local_http_server(folder: Path):
    """An HTTP server on 127.0.0.1 serving ``folder``; yields its base URL and the paths requested.

    Download code is tested against it (and ``file://`` URLs): no test reaches the network.
    """
    import functools
    import http.server

    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):  # keep the test output readable
            pass

        def do_GET(self):
            hits.append(self.path)
            super().do_GET()

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", hits
    finally:
        httpd.shutdown()
        httpd.server_close()


# The model the compiled-decoding tests use, book/generation.md's example's, shared so that a run
# compiles its graph once (Inductor's cache is keyed by the graph and the shapes): with a
# 48-position cache in tests/test_generation.py, `llama generate --compile` in
# tests/test_cli_generate.py and the chapter's example. A cold graph costs about 15 s of CPU. The
# eager tests use it and its multi-head twin (DECODER_BASE with n_kv_heads = n_heads).
DECODER_BASE = dict(dim=64, n_layers=2, n_heads=4, vocab_size=97, hidden_dim=96, max_seq_len=96)
DECODER_GQA = {**DECODER_BASE, "n_kv_heads": 2, "tie_embeddings": True}
DECODER_CACHE = 48


def check_compiled_sampling_and_nan(decoder, model: Transformer) -> None:
    """What a compiled decoder's loop does beside the step's own greedy choice: it samples as the
    eager loop does; when a step's logits turn NaN it stops with the eager loop's error, naming
    the token, instead of yielding the -1 the step gives for it; and the NaN that step wrote into
    the cache does not reach the next generation once the weight is mended."""
    from llama import Sampling, generate

    sampled = Sampling(temperature=1.0, seed=0)
    assert decoder.generate([1, 5, 9], 20, sampled) == generate(model, [1, 5, 9], 20, sampled)
    stream = decoder.generate_stream([1, 5, 9], 5)
    next(stream)  # chosen from the eager prefill's logits
    weight = model.layers[0].attention.wv.weight
    kept = weight[0, 0].item()
    with torch.no_grad():
        weight[0, 0] = float("nan")  # the next step caches a NaN value at position 3; its logits are NaN
    with pytest.raises(ValueError, match=r"^at new token 2: the model produced NaN logits"):
        next(stream)
    with torch.no_grad():
        weight[0, 0] = kept
    # position 3 is masked for a 2-token prompt, but a masked value still counts 0 times: 0 * NaN
    assert decoder.generate([1, 5], 8) == generate(model, [1, 5], 8)



# --- Hostile inputs: the refusal tests' shared pieces --------------------------------------------
#: A one-layer model small enough that a test makes dozens of its files in a second.
HOSTILE_TINY = dict(dim=32, n_layers=1, n_heads=4, vocab_size=50, max_seq_len=32, hidden_dim=64)


def refused(capsys, argv: list[str]) -> str:
    """``llama ARGV`` must exit 2 with one line on stderr and print nothing; returns the line."""
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 2, captured.err
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err, captured.err
    assert captured.out == ""
    return captured.err


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` and its bytes: what a refusal must leave as it was."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def hf_folder(path: Path, config: ModelConfig | None = None, **config_fields) -> Path:
    """A Hugging Face folder of a random model whose config.json has ``config_fields`` changed
    (json.dumps writes float("inf") as Infinity and float("nan") as NaN, as other tools do)."""
    import json

    save_model(random_model(config or ModelConfig(**HOSTILE_TINY)), path)
    saved = json.loads((path / "config.json").read_text())
    (path / "config.json").write_text(json.dumps({**saved, **config_fields}))
    return path


def sharded_folder(path: Path, **config_fields) -> Path:
    """A checkpoint folder as a --parallel fsdp run writes it (state.json + model/), tiny tensors."""
    import json
    import warnings

    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageWriter

    model = random_model(ModelConfig(**HOSTILE_TINY))
    path.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DCP's note that it saves without a process group
        dcp.save(model.state_dict(), storage_writer=HuggingFaceStorageWriter(str(path / "model"), save_distributed=True),
                 no_dist=True)
    (path / "state.json").write_text(json.dumps({"step": 4, "model_config": {**model.config.to_dict(), **config_fields}}))
    return path


def make_text(path: Path, n_words: int = 6000, seed: int = 0, words: str | None = None) -> Path:
    """A seeded text of ``n_words`` words from a small vocabulary: it trains a tokenizer and a tiny model in seconds."""
    import random

    rng = random.Random(seed)
    vocabulary = (words or "the king and queen of denmark speak to thee my lord what news from rome").split()
    path.write_text(" ".join(rng.choice(vocabulary) for _ in range(n_words)) + "\n", encoding="utf-8")
    return path


def gguf_file(path: Path, config: ModelConfig, **metadata) -> Path:
    """A GGUF file of a random model whose ``llama.*`` keys are changed by ``metadata``."""
    from unittest import mock

    import llama.formats.gguf

    model = random_model(config)
    real = llama.formats.gguf._metadata
    with mock.patch.object(llama.formats.gguf, "_metadata", lambda c: {**real(c), **metadata}):
        llama.formats.gguf.save_gguf(model.state_dict(), model.config, path)
    return path


# --- llama serve in a subprocess ------------------------------------------------------------------

class LlamaServer:
    """``llama serve FOLDER FLAGS --port 0`` in a process of its own, on 127.0.0.1; ``url`` once it listens.

    Its stderr goes to ``log`` (a file, never a pipe that could fill up and block the server); the
    URL is read from there. :meth:`stop` sends SIGTERM, as a process manager does, and returns the
    exit code.
    """

    def __init__(self, folder: Path, flags: list[str], log: Path) -> None:
        import time

        self.log = log
        with open(log, "wb") as err:
            self.proc = subprocess.Popen([sys.executable, "-m", "llama.cli", "serve", str(folder), *flags, "--port", "0"],
                                         cwd=REPO, stdout=subprocess.DEVNULL, stderr=err,
                                         env={**os.environ, "PYTHONPATH": str(REPO)})
        deadline = time.monotonic() + HANG_SECONDS
        while not (found := re.search(r"http://127\.0\.0\.1:\d+/", log.read_text(errors="replace"))):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"llama serve did not start (exit {self.proc.poll()}):\n{log.read_text(errors='replace')}")
            time.sleep(0.05)
        self.url = found.group(0)

    def stop(self) -> int:
        """SIGTERM, then the exit code once the process has finished what it had in flight."""
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=HANG_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise

    def output(self) -> str:
        return self.log.read_text(errors="replace")
