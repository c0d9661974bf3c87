"""Image classifiers whose dropout sites are ``MaskedDropout`` (``fedsim.models.masked``), from the leakage lab.

In ordinary use every model here is an ordinary dropout model (``model.train()`` draws fresh masks,
``model.eval()`` switches dropout off). The masks can also be recorded (``site.record = True``), replayed or
optimised (``set_masks``), which is what the Dropout Inversion Attack and the "well-informed" baseline need.

No layer mixes samples across the batch dimension (no BatchNorm anywhere), so a batch of independent victims
can be run through one forward pass and sample i's output depends only on input i and mask slice i.

Models:
    SmallViT     the Dropout Inversion Attack paper's small ViT for 32x32 images (17 dropout sites at depth 4)
    LeNetZhu     the DLG / Inverting Gradients "LeNetZhu" (3 sigmoid convs, one Linear) with dropout before the Linear
    SmallResNet  a ResNet-8 with GroupNorm (or no normalisation) instead of BatchNorm
    ``fedsim.models.build_model`` builds them by name ("vit", "lenet_zhu", "resnet8"; "dropout_mlp").
"""

from __future__ import annotations

import math

import torch
from torch import nn

from fedsim.models.masked import MaskedDropout

__all__ = ["SmallViT", "LeNetZhu", "SmallResNet"]


def _pair(v: int | tuple[int, int]) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


# ---------------------------------------------------------------------------------------------------------------
# Vision transformer
# ---------------------------------------------------------------------------------------------------------------

class PatchFlatten(nn.Module):
    """[b, c, H, W] -> [b, (H/ph)*(W/pw), ph*pw*c]: patches in row-major order, each flattened as (p1, p2, c).

    This is the element order of the einops pattern ``b c (h p1) (w p2) -> b (h w) (p1 p2 c)`` used by the
    official code, so a state dict from the official model gives the same patch embedding.
    """

    def __init__(self, patch_size: tuple[int, int]):
        super().__init__()
        self.ph, self.pw = patch_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, hh, ww = x.shape
        h, w = hh // self.ph, ww // self.pw
        x = x.reshape(b, c, h, self.ph, w, self.pw)
        x = x.permute(0, 2, 4, 3, 5, 1)            # b, h, w, p1, p2, c
        return x.reshape(b, h * w, self.ph * self.pw * c)


class LayerNorm(nn.LayerNorm):
    """nn.LayerNorm over the last dimension, written out with elementary ops (same parameters, same values).

    torch 2.13's vmap rule for the double backward of the fused layer-norm kernel gives wrong input
    gradients (10-30 % off, tests/attacks/test_batched.py checks the batched attack against autograd), and
    the batched attacks differentiate through per-victim gradients under vmap.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(-1, keepdim=True)
        var = (x - mu).pow(2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + self.eps) * self.weight + self.bias


class PreNorm(nn.Module):
    """LayerNorm then ``fn`` (the residual is added by the caller)."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.norm = LayerNorm(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(self.norm(x))


class FeedForward(nn.Module):
    """Linear(dim, hidden) -> GELU -> Dropout -> Linear(hidden, dim) -> Dropout (both Linear with bias)."""

    def __init__(self, dim: int, hidden_dim: int, p: float):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim, hidden_dim), nn.GELU(), MaskedDropout(p),
            nn.Linear(hidden_dim, dim), MaskedDropout(p),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class Attention(nn.Module):
    """Multi-head self-attention: qkv Linear (no bias), softmax(q k^T / sqrt(d)) -> Dropout, to_out Linear -> Dropout.

    The attention-matrix dropout site has mask shape [b, heads, n, n]. As in the official code the output
    projection (``to_out``) is skipped only when ``heads == 1 and dim_head == dim``.
    """

    def __init__(self, dim: int, heads: int, dim_head: int, p: float):
        super().__init__()
        inner = heads * dim_head
        self.heads, self.dim_head = heads, dim_head
        self.scale = dim_head ** -0.5
        self.dropout = MaskedDropout(p)                     # registered before to_out: forward order = module order
        self.to_qkv = nn.Linear(dim, 3 * inner, bias=False)
        project_out = not (heads == 1 and dim_head == dim)
        self.to_out = nn.Sequential(nn.Linear(inner, dim), MaskedDropout(p)) if project_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        # b n (h d) -> b h n d
        q, k, v = (t.reshape(b, n, self.heads, self.dim_head).transpose(1, 2) for t in (q, k, v))
        attn = torch.softmax(torch.matmul(q, k.transpose(-1, -2)) * self.scale, dim=-1)
        attn = self.dropout(attn)
        out = torch.matmul(attn, v)                         # b h n d
        out = out.transpose(1, 2).reshape(b, n, self.heads * self.dim_head)
        return self.to_out(out)


class Transformer(nn.Module):
    """``depth`` pre-norm blocks: x + Attention(LN(x)), then x + FeedForward(LN(x)); no final LayerNorm."""

    def __init__(self, dim: int, depth: int, heads: int, dim_head: int, mlp_dim: int, p: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([PreNorm(dim, Attention(dim, heads, dim_head, p)), PreNorm(dim, FeedForward(dim, mlp_dim, p))])
            for _ in range(depth)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for attn, ff in self.layers:
            x = attn(x) + x
            x = ff(x) + x
        return x


class SmallViT(nn.Module):
    """The small vision transformer of the Dropout Inversion Attack code, with ``MaskedDropout`` sites.

    Followed: github.com/dAI-SY-Group/DropoutInversionAttack, commit 37a3d4f206c0e788263dfa46bb5464ef21dd0c13,
    ``src/models/vit.py`` (itself lucidrains/vit-pytorch ``vit_pytorch/vit.py`` at commit 2fa2b62, June 2022, with
    ``nn.Dropout`` swapped for the authors' ``MaskDropout``) and ``example_configs/models/ViT.yaml``
    (hidden 256, depth 4, 16 heads, mlp 256, patch 4, dropout 0.25). ``build_VisionTransformer`` sets
    ``dim_head = hidden_size // attention_heads`` (= 16 here, not lucidrains' default 64) and
    ``emb_dropout = dropout``.

    Structure (pool = "cls"):
        patches [b, n, p*p*c] (einops order (p1 p2 c)) -> Linear(p*p*c, dim)            (no LayerNorm around it)
        prepend cls token, add pos-embedding [1, n+1, dim] -> Dropout(emb_dropout)       site 1
        depth x:  x = x + Attention(LayerNorm(x));  x = x + FeedForward(LayerNorm(x))
            Attention: to_qkv Linear(dim, 3*heads*dim_head, bias=False), softmax -> Dropout   site (attention matrix)
                       to_out Linear(heads*dim_head, dim) -> Dropout                             site
            FeedForward: Linear(dim, mlp) -> GELU -> Dropout -> Linear(mlp, dim) -> Dropout      2 sites
        x[:, 0] (cls) -> LayerNorm(dim) -> Linear(dim, n_classes)
    so there are 1 + 4 * depth dropout sites (17 for depth 4), in ``dropout_sites`` order = forward order.
    Initialisation as in the official code: PyTorch defaults, ``cls_token`` and ``pos_embedding`` ~ N(0, 1).
    The parameter and module names match the official model's, so its state dicts load directly.

    Differences from the official code: plain reshape/permute instead of einops; the official ``MaskDropout``
    recorded ``x != 0`` after dropout as the mask (which also marks exact zeros of the activation as dropped),
    ``MaskedDropout`` records the drawn Bernoulli mask itself. The newer lucidrains ViT (e.g. commit 0ebd4ed) adds
    LayerNorms before and after the patch Linear and a final LayerNorm after the transformer, and drops the
    LayerNorm of the head; those are NOT used here, matching the version the DIA experiments ran.
    """

    def __init__(self, image_size: int | tuple[int, int] = 32, patch_size: int | tuple[int, int] = 4,
                 n_classes: int = 10, dim: int = 256, depth: int = 4, heads: int = 16, mlp_dim: int = 256,
                 channels: int = 3, dim_head: int | None = None, p: float = 0.25, emb_p: float | None = None,
                 pool: str = "cls"):
        super().__init__()
        ih, iw = _pair(image_size)
        ph, pw = _pair(patch_size)
        if ih % ph or iw % pw:
            raise ValueError(f"image size {ih}x{iw} must be divisible by the patch size {ph}x{pw}")
        if pool not in ("cls", "mean"):
            raise ValueError(f"pool must be 'cls' or 'mean', got {pool!r}")
        if dim_head is None:
            if dim % heads:
                raise ValueError(f"dim {dim} is not divisible by heads {heads}; pass dim_head")
            dim_head = dim // heads
        self.image_size, self.patch_size, self.channels = (ih, iw), (ph, pw), channels
        n_patches = (ih // ph) * (iw // pw)
        patch_dim = channels * ph * pw
        self.to_patch_embedding = nn.Sequential(PatchFlatten((ph, pw)), nn.Linear(patch_dim, dim))
        self.pos_embedding = nn.Parameter(torch.randn(1, n_patches + 1, dim))
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.dropout = MaskedDropout(p if emb_p is None else emb_p)
        self.transformer = Transformer(dim, depth, heads, dim_head, mlp_dim, p)
        self.pool = pool
        self.mlp_head = nn.Sequential(LayerNorm(dim), nn.Linear(dim, n_classes))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        if tuple(img.shape[1:]) != (self.channels, *self.image_size):
            raise ValueError(f"SmallViT expects [b, {self.channels}, {self.image_size[0]}, {self.image_size[1]}] "
                             f"inputs, got {tuple(img.shape)}")
        x = self.to_patch_embedding(img)
        b = x.shape[0]
        x = torch.cat((self.cls_token.expand(b, -1, -1), x), dim=1)
        x = x + self.pos_embedding
        x = self.dropout(x)
        x = self.transformer(x)
        x = x.mean(dim=1) if self.pool == "mean" else x[:, 0]
        return self.mlp_head(x)


# ---------------------------------------------------------------------------------------------------------------
# LeNet (DLG / Inverting Gradients variant)
# ---------------------------------------------------------------------------------------------------------------

def _conv_out(n: int, kernel: int, stride: int, padding: int) -> int:
    return (n + 2 * padding - kernel) // stride + 1


class LeNetZhu(nn.Module):
    """The LeNet of DLG (mit-han-lab/dlg ``models/vision.py``) and Inverting Gradients (``LeNetZhu``), plus dropout.

    conv5x5(C->12, stride 2, pad 2) -> Sigmoid -> conv5x5(12->12, stride 2, pad 2) -> Sigmoid
    -> conv5x5(12->12, stride 1, pad 2) -> Sigmoid -> Flatten -> MaskedDropout(p) -> Linear(12*h*w, n_classes).
    The flattened size is 768 for 3x32x32 and 588 for 1x28x28 inputs (as in the papers). All layers have biases.
    ``dlg_init=True`` uses the papers' initialisation (every weight and bias ~ U(-0.5, 0.5)); the default keeps
    PyTorch's initialisation. The dropout site (one, mask shape [b, 12*h*w]) is not in the original models.
    """

    def __init__(self, channels: int = 3, image_size: int | tuple[int, int] = 32, n_classes: int = 10,
                 p: float = 0.25, width: int = 12, dlg_init: bool = False):
        super().__init__()
        ih, iw = _pair(image_size)
        self.channels, self.image_size = channels, (ih, iw)
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(width, width, 5, stride=2, padding=2), nn.Sigmoid(),
            nn.Conv2d(width, width, 5, stride=1, padding=2), nn.Sigmoid(),
        )
        h, w = ih, iw
        for stride in (2, 2, 1):
            h, w = _conv_out(h, 5, stride, 2), _conv_out(w, 5, stride, 2)
        if h < 1 or w < 1:
            raise ValueError(f"image size {ih}x{iw} is too small for LeNetZhu")
        self.features = width * h * w
        self.dropout = MaskedDropout(p)
        self.fc = nn.Linear(self.features, n_classes)
        if dlg_init:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.uniform_(m.weight, -0.5, 0.5)
                    nn.init.uniform_(m.bias, -0.5, 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x).flatten(1)
        return self.fc(self.dropout(out))


# ---------------------------------------------------------------------------------------------------------------
# Small ResNet (ResNet-8) without BatchNorm
# ---------------------------------------------------------------------------------------------------------------

def _norm(kind: str, channels: int, groups: int) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(groups, channels), channels)
    return nn.Identity()


class BasicBlock(nn.Module):
    """conv3x3 -> norm -> ReLU -> conv3x3 -> norm, plus a (1x1 conv -> norm when the shape changes) shortcut, -> ReLU."""

    def __init__(self, c_in: int, c_out: int, stride: int, norm: str, groups: int):
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=bias)
        self.norm1 = _norm(norm, c_out, groups)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, stride=1, padding=1, bias=bias)
        self.norm2 = _norm(norm, c_out, groups)
        self.act = nn.ReLU()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=bias), _norm(norm, c_out, groups))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.norm1(self.conv1(x)))
        out = self.norm2(self.conv2(out))
        return self.act(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-8: conv3x3 stem (16) -> 3 stages of one basic block (16, 32, 64; strides 1, 2, 2) -> global average
    pool -> MaskedDropout(p) -> Linear(64, n_classes).

    Normalisation is GroupNorm (``norm="group"``, ``groups`` groups per layer) or none (``norm="none"``, convs then
    get biases) instead of BatchNorm: BatchNorm's train-mode batch statistics would couple the samples of a batch,
    and its running statistics would make train- and eval-mode differ in more than dropout. Here each sample is
    processed independently. One dropout site, mask shape [b, 64]. Works for any (C, H, W) input (e.g. 1x28x28).
    """

    def __init__(self, channels: int = 3, n_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64),
                 p: float = 0.25, norm: str = "group", groups: int = 8):
        super().__init__()
        if norm not in ("group", "none"):
            raise ValueError(f"norm must be 'group' or 'none' (BatchNorm would mix samples), got {norm!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(channels, widths[0], 3, padding=1, bias=norm == "none"), _norm(norm, widths[0], groups), nn.ReLU())
        blocks, c = [], widths[0]
        for i, w in enumerate(widths):
            blocks.append(BasicBlock(c, w, 1 if i == 0 else 2, norm, groups))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = MaskedDropout(p)
        self.fc = nn.Linear(c, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.pool(self.layers(self.stem(x))).flatten(1)
        return self.fc(self.dropout(out))
