"""Supervised fine-tuning (``llama sft``, llama.posttraining.sft): the masked loss equals PyTorch's
``cross_entropy(ignore_index=-100)`` and the loss written out over the mask; packed windows keep each
target's mask; a run on the training loop logs, checkpoints, resumes bit-identically after a
SIGKILL, trains LoRA adapters as an option, and leaves a chat model; bad input is one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_checkpoint, byte_level_base, random_model, whole_and_killed
from safetensors.torch import load_file

from llama.cli.main import main as cli_main
from llama.formats.load import load_model, save_model
from llama.model.config import ModelConfig
from llama.posttraining.chat import CHAT_TOKENS, ChatFormat, pack
from llama.posttraining.sft import (
    IGNORE,
    SFTData,
    SFTSampler,
    conversation,
    masked_cross_entropy,
    masked_targets,
    pack_stream,
    parse_task,
)
from llama.posttraining.special_tokens import add_special_tokens
from llama.posttraining.tasks import Problem, make_task
from llama.tokenizers.bpe import BPETokenizer
from llama.training.config import TrainConfig
from llama.training.loop import train
from llama.training.loss import log_sum_exp
from llama.training.state import read_log

FLAGS = ["--task", "addition", "--task-args", "digits=1", "--block-size", "64", "--batch-size", "4", "--threads", "1",
         "--eval-tokens", "64", "--sample-tokens", "4", "--no-progress", "--warmup-steps", "2"]

@pytest.fixture
def chat() -> ChatFormat:
    return ChatFormat(add_special_tokens(BPETokenizer([]), CHAT_TOKENS))


@pytest.fixture
def base(tmp_path) -> Path:
    """A small byte-level model saved as ``llama train`` leaves one: model/ with its tokenizer."""
    return byte_level_base(tmp_path / "base")


@pytest.fixture
def text(tmp_path) -> Path:
    path = tmp_path / "text.txt"
    path.write_text("ROMEO. But soft, what light through yonder window breaks?\n" * 40, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------ the loss
@pytest.mark.parametrize("seed", range(3))
def test_masked_loss_equals_pytorch_ignore_index_and_the_loss_written_out(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, 7, 11, generator=g) * 4
    targets = torch.randint(11, (3, 7), generator=g)
    targets[torch.rand(3, 7, generator=g) < 0.5] = IGNORE
    targets[0, 0] = 3  # at least one target is learned
    ours = masked_cross_entropy(logits, targets)
    theirs = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100)
    m = (targets != IGNORE).float()
    picked = logits.gather(2, targets.clamp(min=0)[..., None]).squeeze(-1)
    written = ((log_sum_exp(logits) - picked) * m).sum() / m.sum()
    assert abs(ours.item() - theirs.item()) < 1e-6
    assert abs(ours.item() - written.item()) < 1e-6


def test_masked_loss_gradient_equals_pytorch_s_and_is_zero_on_ignored_positions():
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 5, 9, generator=g) * 3).requires_grad_()
    targets = torch.randint(9, (2, 5), generator=g)
    targets[:, :2] = IGNORE
    (ours,) = torch.autograd.grad(masked_cross_entropy(logits, targets), logits)
    (theirs,) = torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), targets.flatten()), logits)
    assert (ours - theirs).abs().max().item() < 1e-7
    assert ours[:, :2].abs().max().item() == 0.0


def test_a_batch_with_nothing_to_learn_is_refused():
    with pytest.raises(ValueError, match="every target of the batch is ignored"):
        masked_cross_entropy(torch.zeros(1, 2, 3), torch.full((1, 2), IGNORE))


# ------------------------------------------------------------------------------- the windows
def test_targets_are_learned_exactly_on_the_assistant_s_reply_and_its_eot(chat):
    problem = Problem("What is 2 + 3?", "5")
    ids, mask = chat.encode(conversation(problem, system="Be brief."))
    x, y = masked_targets(*pack([(ids, mask)], len(ids) + 5))
    learned = [int(t) for t in y[0] if t != IGNORE]
    assert chat.tokenizer.decode(learned) == "Answer: 5<|eot_id|>"
    assert x[0, : len(ids)].tolist() == ids[: len(ids)] and y[0, : len(ids) - 1].tolist() == [
        i if m else IGNORE for i, m in zip(ids[1:], mask[1:])]
    assert (y[0, len(ids) - 1:] == IGNORE).all()  # padding is never learned


def test_pack_stream_lays_whole_conversations_in_order_and_keeps_the_open_window(chat):
    task = make_task("addition", digits=2)
    encoded = [chat.encode(conversation(p)) for p in task.train_problems(30, seed=0)]
    windows, counts = pack_stream(encoded, 64)
    assert windows and all(len(w[0]) == len(w[1]) == 64 for w in windows)
    k = 0
    for (ids, _mask), n in zip(windows, counts):
        laid = [i for conv in encoded[k:k + n] for i in conv[0]]
        assert ids[: len(laid)] == laid and len(laid) + len(encoded[k + n][0]) > 64  # the next did not fit
        k += n
    assert k < len(encoded)  # the open window's conversations are left for the next call
    with pytest.raises(ValueError, match="conversation 0 is .* longer than a window of 8"):
        pack_stream(encoded, 8)


def test_a_conversation_without_an_assistant_turn_is_refused(chat):
    with pytest.raises(ValueError, match="has no assistant turn, so nothing to train on"):
        chat.encode([{"role": "user", "content": "What is 2 + 3?"}])


def test_the_sampler_resumes_from_its_state_and_splits_one_global_batch_over_ranks(chat):
    task = parse_task("addition:digits=2")
    one = SFTSampler(chat, task, 63, 4, seed=5)
    for _ in range(3):
        one.next_batch()
    state = one.state()
    after = [one.next_batch() for _ in range(2)]
    again = SFTSampler(chat, task, 63, 4, seed=5)
    again.set_state(state)
    for (x, y), (x2, y2) in zip(after, [again.next_batch() for _ in range(2)]):
        assert torch.equal(x, x2) and torch.equal(y, y2)
    whole = SFTSampler(chat, task, 63, 4, seed=1).next_batch()
    halves = [SFTSampler(chat, task, 63, 2, seed=1, rank=r, world_size=2).next_batch() for r in range(2)]
    assert torch.equal(whole[0], torch.cat([h[0] for h in halves])) and torch.equal(whole[1], torch.cat([h[1] for h in halves]))


def test_no_held_out_problem_is_trained_on(chat):
    task = make_task("addition", digits=1)
    sampler = SFTSampler(chat, task, 127, 8, seed=0)
    x, _ = sampler.next_batch()
    text = "".join(chat.tokenizer.decode(row.tolist()) for row in x)
    asked = [line.split("<|eot_id|>")[0] for line in text.split("user<|end_header_id|>\n\n")[1:]]
    assert asked and not any(task.is_held_out(p) for p in asked)


def test_parse_task_refuses_what_is_not_a_task():
    assert repr(parse_task("sort_words:words=3")) == "sort_words(words=3)"
    with pytest.raises(ValueError, match="unknown task 'nope'"):
        parse_task("nope")
    with pytest.raises(ValueError, match="is not KNOB=NUMBER"):
        parse_task("addition:digits")
    assert repr(parse_task("addition:digits=3,work=30")) == "addition(digits=3, work=30)"
    with pytest.raises(ValueError, match="'work' is not KNOB=NUMBER"):
        parse_task("addition:digits=3,work")


def test_a_worked_problem_is_learned_with_its_work():
    problem = Problem("What is 17 + 5?", "22", "17 + 5: 7 + 5 = 12, 1 + 0 + 1 = 2.")
    assert conversation(problem)[1] == {"role": "assistant", "content": "17 + 5: 7 + 5 = 12, 1 + 0 + 1 = 2.\nAnswer: 22"}


# -------------------------------------------------------------------------------- the runs
def sft(*argv: str) -> int:
    return cli_main(["sft", *argv])


@pytest.mark.slow  # two short runs
def test_a_run_trains_the_assistant_tokens_and_leaves_a_chat_model(tmp_path, base, text, capsys):
    out = tmp_path / "run"
    assert sft("--base", str(base), "--data", str(text), "--out", str(out), *FLAGS, "--max-steps", "4",
               "--eval-every", "2") == 0
    log = read_log(out / "log.jsonl")
    assert [r["step"] for r in log] == [2, 4, 4] and all(r["train_loss"] > 0 for r in log[:2])
    run = json.loads((out / "run.json").read_text())
    assert (run["sft"], run["vocab_size"]) == ("addition:digits=1", 260)
    model = load_model(out / "model")
    assert model.config.vocab_size == 260
    tok = ChatFormat(BPETokenizer.load(out / "model" / "tokenizer.json"))  # llama chat finds the chat tokens
    assert tok.eot_id == 259
    base_model = load_model(base)
    assert not torch.equal(model.layers[0].attention.wq.weight, base_model.layers[0].attention.wq.weight)
    assert cli_main(["chat", str(out / "model"), "--message", "What is 2 + 3?", "-n", "4"]) == 0


@pytest.mark.slow
def test_lora_trains_adapters_and_the_new_rows_and_merges_them(tmp_path, base, text):
    out = tmp_path / "lora"
    assert sft("--base", str(base), "--data", str(text), "--out", str(out), *FLAGS, "--max-steps", "2",
               "--eval-every", "2", "--lora-rank", "2") == 0
    ckpt = load_file(out / "checkpoints" / "step-0000002" / "optimizer.safetensors")
    trained = {k.removeprefix("state.").rsplit(".", 1)[0] for k in ckpt if k.startswith("state.")}
    assert trained and all("lora_" in k or k in ("tok_embeddings.weight", "output.weight") for k in trained)
    assert "tok_embeddings.weight" in trained
    merged, first = load_model(out / "model"), load_model(base)
    assert not (out / "adapter").exists() and merged.config.vocab_size == 260
    assert torch.equal(merged.norm.weight, first.norm.weight)  # frozen under LoRA
    assert not torch.equal(merged.layers[0].attention.wq.weight, first.layers[0].attention.wq.weight)  # merged


@pytest.mark.slow  # two fine-tuning processes
def test_exact_resume_after_sigkill(tmp_path, base, text):
    """Kill a run after step 5 (its last checkpoint: step 4); resume it; at step 8 its weights,
    optimizer state and sampler position are bit-identical to an uninterrupted run's."""
    flags = ["--base", str(base), "--data", str(text), *FLAGS, "--max-steps", "8", "--eval-every", "4"]
    killed = whole_and_killed(tmp_path, "sft", flags, step=5)
    assert (killed / "checkpoints" / "latest").read_text().strip() == "step-0000004"
    assert sft("--base", str(base), "--out", str(killed), "--resume") == 0
    assert_same_checkpoint(tmp_path / "whole" / "checkpoints" / "step-0000008", killed / "checkpoints" / "step-0000008")
    assert int(load_file(killed / "checkpoints" / "step-0000008" / "optimizer.safetensors")["rng.sampler"][0]) > 0
    assert [r["train_loss"] for r in read_log(killed / "log.jsonl")] == [
        r["train_loss"] for r in read_log(tmp_path / "whole" / "log.jsonl")]


def test_errors(tmp_path, base, text, capsys):
    def error(*argv: str) -> str:
        assert sft(*argv) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    common = ["--data", str(text), "--max-steps", "1"]
    assert "--task: unknown task 'nope'; choose one of addition" in error(
        "--base", str(base), "--out", str(tmp_path / "a"), "--task", "nope", *common)
    assert "--task is required" in error("--base", str(base), "--out", str(tmp_path / "b"), *common)
    assert "--task-args needs --task" in error("--base", str(base), "--out", str(tmp_path / "c"), "--task-args", "digits=2", *common)
    assert "--task: sort_words has no work to show: work=... is for addition" in error(
        "--base", str(base), "--out", str(tmp_path / "c"), "--task", "sort_words", "--task-args", "words=3,work=30", *common)
    bare = tmp_path / "bare"
    save_model(random_model(ModelConfig(dim=32, n_layers=2, n_heads=4, vocab_size=256, max_seq_len=64)), bare)
    assert "has no tokenizer.json or tokenizer.model beside the base model; pass the tokenizer" in error(
        "--base", str(bare), "--out", str(tmp_path / "d"), "--task", "addition", *common)
    with pytest.raises(ValueError, match="give source"):
        train(TrainConfig(out=str(tmp_path / "e"), base=str(base), sft="addition", max_steps=1))
    with pytest.raises(ValueError, match="supervised fine-tuning .* trains a pre-trained model"):
        TrainConfig(out="x", sft="addition", max_steps=1)
    assert SFTData().tokenizer(BPETokenizer([])).vocab_size == 260
