"""3D ViT image encoder of SAM-Med3D / SegAnyPET (parameter names as published).

Input ``(B, 1, S, S, S)`` float32 crop (S = 128, axes (i, j, k) of the canonical 1.5 mm grid, already
normalised); output image embedding ``(B, prompt_embed_dim, g, g, g)`` with g = S / 16 = 8.

Two implementations of the windowed blocks give the same numbers:

- ``fast_window=False``: the published one. The 8³ token grid is zero-padded (after ``norm1``) to a
  14³ window and attention runs over all 2,744 tokens.
- ``fast_window=True`` (default): the padding tokens are all zero after ``norm1``, so each has key
  ``b_k`` and value ``b_v`` (the qkv bias); they differ only in the relative-position term of the
  logit, a sum of one term per axis. Their total softmax weight for a query is therefore
  ``exp(q·b_k·scale) · Σ_{padded (d,h,w)} e^{r_d(d)} e^{r_h(h)} e^{r_w(w)}``, and the sum over the
  padded part of the 14³ product grid is ``P_d F_h F_w + R_d P_h F_w + R_d R_h P_w`` with per-axis
  sums over real (R), padded (P) and all (F) positions — no cancellation, exact. All padding tokens
  become ONE extra key ``b_k`` / value ``b_v`` whose logit carries ``log`` of that sum as a per-query
  bias, and attention runs over 512 + 1 keys. See docs/model.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from seganypet.modeling.common import LayerNorm3d, MLPBlock, conv_kernel_eq_stride
from seganypet.modeling.config import ModelConfig


def get_rel_pos(q_size: int, k_size: int, rel_pos: torch.Tensor) -> torch.Tensor:
    """Relative-position embeddings ``(q_size, k_size, C)`` for query/key index pairs on one axis.

    ``rel_pos`` is the learned table ``(L, C)``; it is linearly resized when ``L != 2·max(q,k) − 1``
    (as in SAM; never the case for matching checkpoints).
    """
    max_rel_dist = int(2 * max(q_size, k_size) - 1)
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos_resized = F.interpolate(
            rel_pos.reshape(1, rel_pos.shape[0], -1).permute(0, 2, 1), size=max_rel_dist, mode="linear"
        )
        rel_pos_resized = rel_pos_resized.reshape(-1, max_rel_dist).permute(1, 0)
    else:
        rel_pos_resized = rel_pos
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * max(k_size / q_size, 1.0)
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * max(q_size / k_size, 1.0)
    relative_coords = (q_coords - k_coords) + (k_size - 1) * max(q_size / k_size, 1.0)
    return rel_pos_resized[relative_coords.long()]


def add_decomposed_rel_pos(
    attn: torch.Tensor,
    q: torch.Tensor,
    rel_pos_d: torch.Tensor,
    rel_pos_h: torch.Tensor,
    rel_pos_w: torch.Tensor,
    q_size: tuple[int, int, int],
    k_size: tuple[int, int, int],
) -> torch.Tensor:
    """Published 3D decomposed relative positions, INCLUDING its broadcasting quirk.

    ``attn (B, Nq, Nk)``, ``q (B, Nq, C)``. With
    ``rel_x[b, qd, qh, qw, k] = q(qd, qh, qw)·R_x[q_x − k + n − 1]`` the published code indexes
    the three terms with trailing-``None`` slices that do not line up with the key axes, so the logit of
    query (qd, qh, qw) and key (kd, kh, kw) receives
    ``rel_d[qd, qh, qw, kw] + rel_h[qd, qh, kd, kw] + rel_w[qd, qh, kh, kw]`` (note the query
    positions (qd, qh, kd) and (qd, qh, kh) in the last two). It only runs for cubic grids. The
    published weights were trained with it, so we keep it (see docs/model.md).
    """
    q_d, q_h, q_w = q_size
    k_d, k_h, k_w = k_size
    rd = get_rel_pos(q_d, k_d, rel_pos_d)
    rh = get_rel_pos(q_h, k_h, rel_pos_h)
    rw = get_rel_pos(q_w, k_w, rel_pos_w)
    b, _, dim = q.shape
    r_q = q.reshape(b, q_d, q_h, q_w, dim)
    rel_d = torch.einsum("bdhwc,dkc->bdhwk", r_q, rd)
    rel_h = torch.einsum("bdhwc,hkc->bdhwk", r_q, rh)
    rel_w = torch.einsum("bdhwc,wkc->bdhwk", r_q, rw)
    attn = (
        attn.view(b, q_d, q_h, q_w, k_d, k_h, k_w)
        + rel_d[:, :, :, :, None, None]
        + rel_h[:, :, :, None, :, None]
        + rel_w[:, :, :, None, None, :]
    ).view(b, q_d * q_h * q_w, k_d * k_h * k_w)
    return attn


def padding_log_mass(
    t1: torch.Tensor,
    t2_real: torch.Tensor,
    t2_pad: torch.Tensor,
    t3_real: torch.Tensor,
    t3_pad: torch.Tensor,
) -> torch.Tensor:
    """``log Σ_{padded keys} exp(rel-pos bias)`` per real query, exactly, for the published layout.

    A window of S positions per axis holds n real ones (the rest is padding). For a real query:
    ``t1 (..., n, S)`` is ``rel_d`` over (query w-coordinate qw, key index kw); ``t2_* / t3_*
    (..., rows, S)`` are ``rel_h`` / ``rel_w`` at query w-coordinate j (rows: the n real j, then the
    S − n padding j, whose q is the qkv bias) over kw. The bias of key (kd, kh, kw) is
    ``t1[qw, kw] + t2[kd, kw] + t3[kh, kw]`` (see :func:`add_decomposed_rel_pos`) and the key is
    padding when any coordinate is >= n. For each kw the sum over (kd, kh) factorises; with R / P / F
    the sums of exp over real / padding / all rows, the padded part is ``F2·F3`` for a padding kw and
    ``P2·F3 + R2·P3`` for a real kw: all terms positive, no cancellation. Returns ``(..., n)``.
    """
    dt = torch.promote_types(t1.dtype, torch.float32)  # bf16 inputs: do the sums in float32
    n = t1.shape[-2]

    def sums(real: torch.Tensor, pad: torch.Tensor) -> tuple[torch.Tensor, ...]:
        real, pad = real.to(dt), pad.to(dt)
        m = torch.maximum(real.amax(-2), pad.amax(-2))
        r = torch.exp(real - m.unsqueeze(-2)).sum(-2)
        p = torch.exp(pad - m.unsqueeze(-2)).sum(-2)
        return m, r, p, r + p

    m2, r2, p2, f2 = sums(t2_real, t2_pad)
    m3, r3, p3, f3 = sums(t3_real, t3_pad)
    g = torch.cat([p2[..., :n] * f3[..., :n] + r2[..., :n] * p3[..., :n], f2[..., n:] * f3[..., n:]], -1)
    log_g = torch.log(g) + m2 + m3  # (..., S) over kw
    return torch.logsumexp(t1.to(dt) + log_g.unsqueeze(-2), dim=-1)


class Attention(nn.Module):
    """Multi-head self-attention with 3D decomposed relative positions (``attn.*`` keys)."""

    def __init__(self, dim: int, num_heads: int, input_size: tuple[int, int, int], qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.scale = head_dim**-0.5
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.input_size = input_size
        self.rel_pos_d = nn.Parameter(torch.zeros(2 * input_size[0] - 1, head_dim))
        self.rel_pos_h = nn.Parameter(torch.zeros(2 * input_size[1] - 1, head_dim))
        self.rel_pos_w = nn.Parameter(torch.zeros(2 * input_size[2] - 1, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Published attention over all tokens of ``x (B, D, H, W, C)`` (explicit softmax)."""
        b, d, h, w, _ = x.shape
        n = d * h * w
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, b * self.num_heads, n, -1).unbind(0)
        attn = (q * self.scale) @ k.transpose(-2, -1)
        attn = add_decomposed_rel_pos(
            attn, q, self.rel_pos_d, self.rel_pos_h, self.rel_pos_w, (d, h, w), (d, h, w)
        )
        attn = attn.softmax(dim=-1)
        x = (attn @ v).view(b, self.num_heads, d, h, w, -1).permute(0, 2, 3, 4, 1, 5).reshape(b, d, h, w, -1)
        return self.proj(x)

    def forward_fast(self, x: torch.Tensor, window: int = 0) -> torch.Tensor:
        """Same result as padding ``x (B, n, n, n, C)`` with zeros to ``window³`` (0: no padding),
        running :meth:`forward` and cropping — but over the n³ real tokens plus ONE extra key that
        stands for all padding tokens (key/value = qkv bias, logit bias = :func:`padding_log_mass`).
        Needs a cubic grid with ``n <= window``."""
        b, d, h, w, c = x.shape
        n = d * h * w
        nh = self.num_heads
        s = window or d
        pad = s > d
        tokens = x.reshape(b, n, c)
        if pad:  # one zero token: its q/k/v are the qkv bias, i.e. those of every padding token
            tokens = torch.cat([tokens, tokens.new_zeros(b, 1, c)], dim=1)
        qkv = self.qkv(tokens).reshape(b, tokens.shape[1], 3, nh, -1).permute(2, 0, 3, 1, 4)
        q_all, k, v = qkv.unbind(0)  # (B, nh, N(+1), hd)
        hd = q_all.shape[-1]
        q = q_all[:, :, :n]
        dt = q.dtype
        rd = get_rel_pos(s, s, self.rel_pos_d).to(dt)  # (s, s, hd): [query coord, key coord]
        rh = get_rel_pos(s, s, self.rel_pos_h).to(dt)
        rw = get_rel_pos(s, s, self.rel_pos_w).to(dt)
        q5 = q.reshape(b, nh, d, h, w, hd)
        t1 = torch.einsum("bndhwc,dkc->bndhwk", q5, rd[:d])  # (B, nh, d, h, w, s)
        t2 = torch.einsum("bndhwc,hkc->bndhwk", q5, rh[:h])  # rows: query w-coordinate j
        t3 = torch.einsum("bndhwc,wkc->bndhwk", q5, rw[:w])
        # bias[(qd,qh,qw), (kd,kh,kw)] = t1[qd,qh,qw,kw] + t2[qd,qh,kd,kw] + t3[qd,qh,kh,kw]
        t23 = t2[:, :, :, :, :d, None, :w] + t3[:, :, :, :, None, :h, :w]  # (B, nh, d, h, kd, kh, kw)
        log_mass = None
        if pad:
            q_pad = q_all[:, :, n]  # (B, nh, hd): q of the padding tokens
            t2_pad = torch.einsum("bnc,hkc->bnhk", q_pad, rh[:h])[:, :, None, :, None, :]
            t3_pad = torch.einsum("bnc,jkc->bnjk", q_pad, rw[w:])[:, :, None, None, :, :]
            log_mass = padding_log_mass(
                t1,
                t2,
                t2_pad.expand(b, nh, d, h, s - w, s),
                t3,
                t3_pad.expand(b, nh, d, h, s - w, s),
            ).reshape(b, nh, n, 1)
        t1b = t1[:, :, :, :, :, None, None, :w]
        t23b = t23[:, :, :, :, None]
        if torch.is_grad_enabled() and (t1b.requires_grad or t23b.requires_grad):
            bias = (t1b + t23b).reshape(b, nh, n, n)
            if log_mass is not None:
                bias = torch.cat([bias, log_mass.to(dt)], dim=-1)
        else:  # inference: write the bias once, in place, extra column included
            bias = torch.empty(b, nh, n, n + pad, dtype=dt, device=x.device)
            torch.add(t1b, t23b, out=bias[..., :n].view(b, nh, d, h, w, d, h, w))
            if log_mass is not None:
                bias[..., n:] = log_mass
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=self.scale)
        return self.proj(out.transpose(1, 2).reshape(b, d, h, w, c))


def window_partition3d(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Zero-pad ``x (B, D, H, W, C)`` to multiples of ``window_size`` and cut it into windows
    ``(B·nW, ws, ws, ws, C)``; also returns the padded sizes."""
    b, d, h, w, c = x.shape
    pad_d = (window_size - d % window_size) % window_size
    pad_h = (window_size - h % window_size) % window_size
    pad_w = (window_size - w % window_size) % window_size
    if pad_d > 0 or pad_h > 0 or pad_w > 0:
        x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h, 0, pad_d))
    dp, hp, wp = d + pad_d, h + pad_h, w + pad_w
    ws = window_size
    x = x.view(b, dp // ws, ws, hp // ws, ws, wp // ws, ws, c)
    windows = x.permute(0, 1, 3, 5, 2, 4, 6, 7).contiguous().view(-1, ws, ws, ws, c)
    return windows, (dp, hp, wp)


def window_unpartition3d(
    windows: torch.Tensor, window_size: int, pad_dhw: tuple[int, int, int], dhw: tuple[int, int, int]
) -> torch.Tensor:
    """Inverse of :func:`window_partition3d`, cropping the padding: ``(B, D, H, W, C)``."""
    dp, hp, wp = pad_dhw
    d, h, w = dhw
    ws = window_size
    b = windows.shape[0] // (dp * hp * wp // ws // ws // ws)
    x = windows.view(b, dp // ws, hp // ws, wp // ws, ws, ws, ws, -1)
    x = x.permute(0, 1, 4, 2, 5, 3, 6, 7).contiguous().view(b, dp, hp, wp, -1)
    if dp > d or hp > h or wp > w:
        x = x[:, :d, :h, :w, :].contiguous()
    return x


class Block3D(nn.Module):
    """Pre-norm transformer block; ``window_size`` 0 means global attention over the grid."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        window_size: int,
        input_size: tuple[int, int, int],
        eps: float,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads, input_size if window_size == 0 else (window_size,) * 3)
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        self.window_size = window_size
        self.fast = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x
        x = self.norm1(x)
        d, h, w = x.shape[1:4]
        ws = self.window_size
        if self.fast and d == h == w and (ws == 0 or d <= ws):
            x = self.attn.forward_fast(x, ws)
        elif ws > 0:
            windows, pad_dhw = window_partition3d(x, ws)
            x = window_unpartition3d(self.attn(windows), ws, pad_dhw, (d, h, w))
        else:
            x = self.attn(x)
        x = shortcut + x
        return x + self.mlp(self.norm2(x))


class PatchEmbed3D(nn.Module):
    """Conv3d patchify: ``(B, 1, S, S, S) -> (B, g, g, g, C)`` (channels last)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).permute(0, 2, 3, 4, 1)


class ImageEncoderViT3D(nn.Module):
    """``forward(x (B, 1, S, S, S)) -> (B, prompt_embed_dim, g, g, g)``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        c = config
        g = c.grid_size
        self.img_size = c.image_size
        self.patch_embed = PatchEmbed3D(c.patch_size, 1, c.encoder_embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, g, g, g, c.encoder_embed_dim))
        self.blocks = nn.ModuleList(
            Block3D(
                c.encoder_embed_dim,
                c.encoder_num_heads,
                c.encoder_mlp_ratio,
                0 if i in c.encoder_global_attn_indexes else c.encoder_window_size,
                (g, g, g),
                c.layer_norm_eps,
            )
            for i in range(c.encoder_depth)
        )
        out = c.prompt_embed_dim
        self.neck = nn.Sequential(
            nn.Conv3d(c.encoder_embed_dim, out, kernel_size=1, bias=False),
            LayerNorm3d(out),
            nn.Conv3d(out, out, kernel_size=3, padding=1, bias=False),
            LayerNorm3d(out),
        )
        self.fast_window = c.fast_window

    @property
    def fast_window(self) -> bool:
        """True: closed-form padding attention (default); False: the published padded attention."""
        return all(blk.fast for blk in self.blocks)

    @fast_window.setter
    def fast_window(self, value: bool) -> None:
        for blk in self.blocks:
            blk.fast = bool(value)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = self.fast_window
        x = (self._patch_embed_matmul(x) if fast else self.patch_embed(x)) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        if fast:  # 1x1x1 conv as a matmul on the channels-last tokens (same numbers, faster)
            x = F.linear(x, self.neck[0].weight.flatten(1))
            return self.neck[1:](x.permute(0, 4, 1, 2, 3))
        return self.neck(x.permute(0, 4, 1, 2, 3))

    def _patch_embed_matmul(self, x: torch.Tensor) -> torch.Tensor:
        """``patch_embed`` as one matmul over the patches: ``(B, 1, S, S, S) -> (B, g, g, g, C)``."""
        if any(n % self.patch_embed.proj.kernel_size[0] for n in x.shape[2:]):
            return self.patch_embed(x)
        return conv_kernel_eq_stride(x, self.patch_embed.proj, channels_last_out=True)
