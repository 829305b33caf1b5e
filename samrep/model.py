"""SAM weights: load `facebook/sam-vit-huge` (hub cache or a local folder) or make synthetic ones.
The model is always `transformers.SamModel`; `ARCHITECTURES` maps a name to its config builder."""

import hashlib
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import SamConfig, SamModel

from samrep.errors import SamrepError
from samrep.hub import hub_reachable, offline_mode
from samrep.progress import log
from samrep.store import checked, remove, temp_suffix

VIT_H_HUB_ID = "facebook/sam-vit-huge"


def vit_h_config() -> SamConfig:
    """The ViT-H config of `facebook/sam-vit-huge` (641.1 M parameters), every value explicit."""
    vision = dict(hidden_size=1280, num_hidden_layers=32, num_attention_heads=16, mlp_dim=5120)
    vision |= dict(global_attn_indexes=[7, 15, 23, 31], output_channels=256, image_size=1024)
    vision |= dict(patch_size=16, window_size=14, qkv_bias=True, layer_norm_eps=1e-6)
    return SamConfig(vision_config=vision | dict(use_abs_pos=True, use_rel_pos=True))


def tiny_config() -> SamConfig:
    """A small SAM for tests: 2 vision layers (windowed, global), 32 wide; ViT-H's input (1024x1024,
    64x64 tokens, window 14 padded to 70) and module types, so every code path runs, in < 1 s."""
    vision = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64)
    vision |= dict(global_attn_indexes=[1], output_channels=32, num_pos_feats=16)
    prompt, dec = dict(hidden_size=32), dict(hidden_size=32, mlp_dim=64, iou_head_hidden_dim=32)
    return SamConfig(vision_config=vision, prompt_encoder_config=prompt, mask_decoder_config=dec)


ARCHITECTURES = {"vit_h": vit_h_config, "tiny": tiny_config}


@dataclass(frozen=True)
class WeightsInfo:
    """Where the weights came from. `sha256` hashes every tensor of the state dict."""

    source: str  # "hub", "local" or "synthetic"
    name: str  # hub id, folder, or "synthetic-<arch>-seed<N>"
    sha256: str
    synthetic: bool
    arch: str
    num_parameters: int

    def to_dict(self) -> dict:
        return asdict(self)


_DECODER_PARTS = ("prompt_encoder.", "mask_decoder.")


def synthetic_init_(model: SamModel, seed: int) -> SamModel:
    """Seeded init that keeps activations sane: transformers' own (std ~1e-10, zero rel-pos tables)
    collapses them to ~1e-9 and CPU math hits denormals (a ViT-H forward takes tens of minutes)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            owner, leaf = name.rsplit(".", 2)[-2:] if "." in name else ("", name)
            if "norm" in owner:
                param.fill_(1.0 if leaf == "weight" else 0.0)
            elif leaf == "bias":
                param.zero_()
            elif leaf == "positional_embedding":
                param.copy_(torch.randn(param.shape, generator=gen))
            elif param.ndim >= 2 and leaf == "weight" and name.startswith(_DECODER_PARTS):
                # Prompt encoder and mask decoder: std 1/sqrt(fan_in) keeps the mask logits
                # O(1); with 0.02 they shrink to ~1e-5 and thresholding them at 0 is sign noise.
                fan_in = param[0].numel()
                t = torch.randn(param.shape, generator=gen) / fan_in**0.5
                param.copy_(t.clamp_(-2 / fan_in**0.5, 2 / fan_in**0.5))
            elif param.ndim >= 2 and leaf == "weight":
                t = torch.randn(param.shape, generator=gen) * 0.02
                param.copy_(t.clamp_(-0.04, 0.04))
            else:  # rel_pos_h/w, pos_embed, prompt and mask-token embeddings
                param.copy_(torch.randn(param.shape, generator=gen) * 0.02)
    return model


def weights_sha256(model: nn.Module) -> str:
    """sha256 over (name, dtype, shape, bytes) of every state-dict tensor, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _check_architecture(model: SamModel, arch: str, where: str) -> None:
    """Fail if loaded weights are not the architecture the params name."""
    want, got = ARCHITECTURES[arch]().vision_config, model.config.vision_config
    diff = [
        f"vision {k} = {getattr(got, k)}, expected {getattr(want, k)}"
        for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "mlp_dim")
        if getattr(got, k) != getattr(want, k)
    ]
    g, w = list(got.global_attn_indexes), list(want.global_attn_indexes)
    diff += [f"global_attn_indexes {g}, expected {w}"] if g != w else []
    if diff:
        raise SamrepError(f"{where}: weights are not the '{arch}' architecture ({diff[0]})")


def load_model(
    weights: str, arch: str, allow_synthetic: bool, seed: int, cache_dir: Path, attn: str = "sdpa"
) -> tuple[SamModel, WeightsInfo]:
    """SAM (attention implementation `attn`), fp32, CPU, eval mode, from a hub id (cache first; the
    network only if HF_HUB_OFFLINE is unset and the hub answers) or a `save_pretrained` folder;
    else, with `allow_synthetic`, synthetic weights for `arch`, made once, cached in `cache_dir`."""
    if arch not in ARCHITECTURES:
        raise SamrepError(f"model.arch: unknown architecture '{arch}' (known: {[*ARCHITECTURES]})")
    model, source, name, reason = None, "", weights, ""
    path = Path(weights).expanduser()
    if not weights:
        reason = "params model.weights is empty"
    elif not (path.is_dir() or weights.startswith((".", "/", "~"))):
        model, reason = _from_hub(weights, attn)
        source = "hub"
    elif not (path / "config.json").is_file():
        reason = f"local weights folder {path} has no config.json"
    else:
        log(f"weights: loading {path}")
        try:
            model, source = SamModel.from_pretrained(path, attn_implementation=attn), "local"
        except Exception as exc:  # the user's folder: reported, never replaced
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
            raise SamrepError(f"{path}: cannot load the local weights ({why})") from None
    if model is None:
        if not allow_synthetic:
            raise SamrepError(
                f"weights '{weights}' not available ({reason}) and model.allow_synthetic is false"
            )
        model, name = _synthetic(arch, seed, cache_dir, attn, reason)
        source = "synthetic"
    _check_architecture(model, arch, f"weights '{name}'")
    model = model.float().eval()
    n = sum(p.numel() for p in model.parameters())
    info = WeightsInfo(source, str(name), weights_sha256(model), source == "synthetic", arch, n)
    return model, info


def _from_hub(repo_id: str, attn: str) -> tuple[SamModel | None, str]:
    """Hub cache first, then the network if allowed and reachable. Returns (model, why-not)."""
    kw = dict(attn_implementation=attn)
    try:
        model = SamModel.from_pretrained(repo_id, local_files_only=True, **kw)
        log(f"weights: {repo_id} from the Hugging Face cache")
        return model, ""
    except OSError:
        pass  # not cached
    except Exception as exc:  # cached but damaged: said once, not replaced by synthetic weights
        raise SamrepError(
            f"weights '{repo_id}': the Hugging Face cache's copy is damaged "
            f"({type(exc).__name__}); delete it from the cache and download it again"
        ) from None
    if offline_mode():
        return None, "not in the Hugging Face cache and HF_HUB_OFFLINE is set"
    if not hub_reachable():
        return None, "not in the Hugging Face cache and the hub is unreachable"
    log(f"weights: downloading {repo_id} (2.6 GB for ViT-H)")
    try:
        return SamModel.from_pretrained(repo_id, **kw), ""
    except OSError as exc:
        return None, f"download failed: {str(exc).splitlines()[0]}"


def _synthetic(arch: str, seed: int, cache: Path, attn: str, reason: str) -> tuple[SamModel, str]:
    name = f"synthetic-{arch}-seed{seed}"
    folder = Path(cache) / name
    if (folder / "config.json").is_file():
        try:
            model = SamModel.from_pretrained(folder, attn_implementation=attn)
            log(f"weights: SYNTHETIC ({reason}); reusing {folder}")
            return model, name
        except Exception as exc:  # a damaged cache is remade: the weights are seeded
            log(f"weights: {folder} is damaged ({type(exc).__name__}); remaking it")
    log(f"weights: SYNTHETIC ({reason}); making {name} (seeded, explicit init)")
    config = ARCHITECTURES[arch]()
    config._attn_implementation = attn
    torch.manual_seed(seed)
    model = synthetic_init_(SamModel(config), seed)
    checked(folder)  # a cache folder linked outside the hw's folders: refused before any work
    tmp = checked(folder.with_name(folder.name + temp_suffix()))
    remove(tmp)
    try:
        model.save_pretrained(tmp)
    except OSError as exc:
        remove(tmp)
        raise SamrepError(f"{folder}: cannot write the weights cache ({exc.strerror})") from None
    remove(folder)  # a damaged, half-written or foreign folder: replaced
    os.replace(tmp, folder)
    return model, name
