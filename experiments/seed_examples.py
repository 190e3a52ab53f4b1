"""Every worked example of the CNN lecture notes, recomputed with jaxconv.

    python experiments/seed_examples.py --out runs/seed

For each example (edge detection, strides, padding, volumes, parameter counts,
pooling, the CNN example table, "why convolutions") it prints what the notes
say, what jaxconv computes, and whether they agree, with a one-line reason
where they differ. Writes seed_examples.md (a report), seed_examples.csv and
seed_examples.json (the same rows, values as JSON) into --out.

The "source" column says where the claim is: "notes" when it is in the text of
the notes (shared/seed/), "lecture" when the notes only show the lecture's
figure (the numbers are those of the figure, Andrew Ng's CNN week 1), "hand"
for a value computed by hand from a filter the notes name.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common  # noqa: E402

import jaxconv  # noqa: E402
from jaxconv import models  # noqa: E402

F32 = jnp.float32

# The notes' filters (cross-correlation, as in the notes and in jaxconv).
VERTICAL = [[1, 0, -1], [1, 0, -1], [1, 0, -1]]
HORIZONTAL = [[1, 1, 1], [0, 0, 0], [-1, -1, -1]]
SOBEL = [[1, 0, -1], [2, 0, -2], [1, 0, -1]]
SCHARR = [[3, 0, -3], [10, 0, -10], [3, 0, -3]]

# The 6x6 image of the edge-detection example: 3 columns of 10, then 3 of 0.
STEP = [[10, 10, 10, 0, 0, 0]] * 6
# The strided-convolution example (7x7 input, f=3, s=2).
SEVEN = [
    [2, 3, 7, 4, 6, 2, 9],
    [6, 6, 9, 8, 7, 4, 3],
    [3, 4, 8, 3, 8, 9, 7],
    [7, 8, 3, 6, 6, 3, 4],
    [4, 2, 1, 8, 3, 4, 6],
    [3, 2, 4, 1, 9, 8, 3],
    [0, 1, 3, 9, 2, 1, 4],
]
SEVEN_FILTER = [[3, 4, 4], [1, 0, 2], [-1, 0, 3]]
POOL_INPUT = [[1, 3, 2, 1], [2, 9, 1, 1], [1, 3, 2, 3], [5, 6, 1, 2]]


def conv_2d(image, filt, **kw):
    """One grey image (n, n) and one filter (f, f) -> (n', n') as nested Python numbers."""
    x = jnp.asarray(image, F32)[None, :, :, None]  # (1, n, n, 1)
    w = jnp.asarray(filt, F32)[:, :, None, None]  # (f, f, 1, 1)
    return _plain(jaxconv.conv2d(x, w, **kw)[0, :, :, 0])


def _plain(a):
    """Array -> nested lists of ints where the values are whole, floats otherwise."""
    a = np.asarray(a, dtype=np.float64)
    if np.all(a == np.round(a)):
        return np.round(a).astype(int).tolist()
    return np.round(a, 6).tolist()


def _params(layer, input_shape):
    _, p = jax.eval_shape(lambda k: layer.init(k, input_shape), jax.random.key(0))
    return jaxconv.count_params(p)


def examples():
    """The rows: dicts with example, quantity, source, notes, jaxconv, agrees, reason."""
    rows = []

    def row(example, quantity, source, notes, computed, reason="", agrees=None):
        if agrees is None:
            try:
                agrees = bool(np.allclose(np.asarray(notes, float), np.asarray(computed, float), rtol=0, atol=1e-6))
            except (ValueError, TypeError):
                agrees = notes == computed
        rows.append(dict(example=example, quantity=quantity, source=source, notes=notes, jaxconv=computed,
                         agrees=agrees, reason=reason if not agrees or reason else ""))

    # --- Edge detection -------------------------------------------------------------------
    row("edge detection", "6x6 step image * vertical filter [[1,0,-1]]x3", "lecture",
        [[0, 30, 30, 0]] * 4, conv_2d(STEP, VERTICAL))
    flipped = [r[::-1] for r in STEP]
    row("edge detection", "flipped image (0s then 10s) * vertical filter", "lecture",
        [[0, -30, -30, 0]] * 4, conv_2d(flipped, VERTICAL))
    quad = [[10, 10, 10, 0, 0, 0]] * 3 + [[0, 0, 0, 10, 10, 10]] * 3
    row("edge detection", "checker image * horizontal filter [[1,1,1],[0,0,0],[-1,-1,-1]]", "lecture",
        [[0, 0, 0, 0], [30, 10, -10, -30], [30, 10, -10, -30], [0, 0, 0, 0]], conv_2d(quad, HORIZONTAL))
    row("edge detection", "6x6 step image * Sobel [[1,0,-1],[2,0,-2],[1,0,-1]]", "hand",
        [[0, 40, 40, 0]] * 4, conv_2d(STEP, SOBEL), "hand: 10·(1+2+1) = 40 in the edge columns")
    row("edge detection", "6x6 step image * Scharr [[3,0,-3],[10,0,-10],[3,0,-3]]", "hand",
        [[0, 160, 160, 0]] * 4, conv_2d(STEP, SCHARR), "hand: 10·(3+10+3) = 160 in the edge columns")

    # --- Padding and stride ---------------------------------------------------------------
    row("strided convolution", "7x7 * [[3,4,4],[1,0,2],[-1,0,3]], s=2", "notes",
        [[91, 100, 88], [69, 91, 117], [44, 72, 74]], conv_2d(SEVEN, SEVEN_FILTER, stride=2))
    for n, f, p, s, padding in [(6, 3, 0, 1, 0), (6, 3, 1, 1, 1), (7, 3, 0, 2, 0), (6, 3, 0, 2, 0), (8, 5, 2, 1, 2)]:
        expected = (n + 2 * p - f) // s + 1  # the notes' ⌊(n + 2p − f)/s⌋ + 1
        shape = jax.eval_shape(lambda x, w: jaxconv.conv2d(x, w, stride=s, padding=padding),
                               jax.ShapeDtypeStruct((1, n, n, 1), F32), jax.ShapeDtypeStruct((f, f, 1, 1), F32)).shape
        row("padding / stride", f"output size n={n} f={f} p={p} s={s}: ⌊(n+2p−f)/s⌋+1", "notes", expected, int(shape[1]))
    for n, f in [(6, 3), (6, 5), (7, 3)]:
        p = (f - 1) // 2  # the notes' "same" padding for odd f
        shape_same = jax.eval_shape(lambda x, w: jaxconv.conv2d(x, w, padding="SAME"),
                                    jax.ShapeDtypeStruct((1, n, n, 1), F32), jax.ShapeDtypeStruct((f, f, 1, 1), F32)).shape
        shape_p = jax.eval_shape(lambda x, w: jaxconv.conv2d(x, w, padding=p),
                                 jax.ShapeDtypeStruct((1, n, n, 1), F32), jax.ShapeDtypeStruct((f, f, 1, 1), F32)).shape
        row("padding / stride", f"'same' n={n} f={f}: p=(f−1)/2={p} keeps n; padding={p} and 'SAME'", "notes",
            [n, n], [int(shape_p[1]), int(shape_same[1])])
        shape_valid = jax.eval_shape(lambda x, w: jaxconv.conv2d(x, w, padding="VALID"),
                                     jax.ShapeDtypeStruct((1, n, n, 1), F32), jax.ShapeDtypeStruct((f, f, 1, 1), F32)).shape
        row("padding / stride", f"'valid' n={n} f={f}: n−f+1", "notes", n - f + 1, int(shape_valid[1]))

    # --- Convolutions over volumes --------------------------------------------------------
    rng = np.random.default_rng(0)  # small integers: every sum below is exact in float32
    rgb = jnp.asarray(rng.integers(0, 10, (1, 6, 6, 3)), F32)  # (m, n_H, n_W, n_C)
    w1 = jnp.asarray(rng.integers(-2, 3, (3, 3, 3, 1)), F32)  # (f, f, n_C, 1)
    w2 = jnp.asarray(rng.integers(-2, 3, (3, 3, 3, 2)), F32)  # (f, f, n_C, 2)
    row("volume", "6x6x3 * 3x3x3 -> shape", "notes", [4, 4, 1], list(jaxconv.conv2d(rgb, w1).shape[1:]))
    row("volume", "6x6x3 * two 3x3x3 filters -> shape", "notes", [4, 4, 2], list(jaxconv.conv2d(rgb, w2).shape[1:]))
    red_only = jnp.zeros((3, 3, 3, 1), F32).at[:, :, 0, 0].set(jnp.asarray(VERTICAL, F32))
    red_map = conv_2d(np.asarray(rgb[0, :, :, 0]), VERTICAL)
    row("volume", "vertical filter on red, zeros on G,B = 2-D edge map of the red channel", "lecture",
        red_map, _plain(jaxconv.conv2d(rgb, red_only)[0, :, :, 0]))
    row("volume", "sum over channels: 3x3x3 filter = Σ_c (channel c * filter c)", "notes",
        _plain(sum(jaxconv.conv2d(rgb[..., c:c + 1], w1[:, :, c:c + 1]) for c in range(3))[0, :, :, 0]),
        _plain(jaxconv.conv2d(rgb, w1)[0, :, :, 0]))

    # --- One layer ------------------------------------------------------------------------
    row("one layer", "params of 10 filters 3x3x3 (+ bias each)", "notes", 280,
        _params(jaxconv.Conv2D(10, 3), (1, 6, 6, 3)), "(3·3·3 + 1)·10 = 280")
    _, p = jax.eval_shape(lambda k: jaxconv.Conv2D(10, 3).init(k, (1, 6, 6, 3)), jax.random.key(0))
    row("one layer", "weights f×f×n_c[l−1]×n_c[l]", "notes", [3, 3, 3, 10], list(p["w"].shape))
    row("one layer", "bias: one per filter, (1,1,1,n_c[l])", "notes", 10, int(p["b"].size),
        "jaxconv stores it as (n_c,), which broadcasts like (1,1,1,n_c)")

    # --- Simple CNN example (lecture figure: 39x39x3 -> 37x37x10 -> 17x17x20 -> 7x7x40 -> 1960) --
    simple = jaxconv.serial(jaxconv.Conv2D(10, 3), jaxconv.Conv2D(20, 5, stride=2), jaxconv.Conv2D(40, 5, stride=2),
                            jaxconv.Flatten())
    shapes = [list(r.shape) for r in jaxconv.summary(simple, (1, 39, 39, 3))[1:]]
    row("simple CNN", "39x39x3 -> f3 s1 10 -> f5 s2 20 -> f5 s2 40 -> flatten", "lecture",
        [[37, 37, 10], [17, 17, 20], [7, 7, 40], [1960]], shapes)

    # --- Pooling --------------------------------------------------------------------------
    x = jnp.asarray(POOL_INPUT, F32)[None, :, :, None]
    row("pooling", "max pool f=2 s=2", "notes", [[9, 2], [6, 3]], _plain(jaxconv.max_pool(x, 2, 2)[0, :, :, 0]))
    row("pooling", "average pool f=2 s=2", "notes", [[3.75, 1.25], [3.75, 2.0]], _plain(jaxconv.avg_pool(x, 2, 2)[0, :, :, 0]))
    row("pooling", "parameters to learn", "notes", 0, _params(jaxconv.MaxPool(2), (1, 4, 4, 1)))

    # --- The CNN example table (seed_cnn: 32x32x3) ----------------------------------------
    summary = {r.name: r for r in jaxconv.summary(models.seed_cnn(), (1, 32, 32, 3))}
    table = [  # notes row, jaxconv layer, notes shape, size, params, reason the params differ
        ("Input", "input", (32, 32, 3), 3072, 0, ""),
        ("CONV1 (f=5, s=1)", "conv1", (28, 28, 8), 6272, 208,
         "5·5·3·8 + 8 = 608; the notes' 5·5·8 + 8 = 208 leaves out the 3 input channels"),
        ("POOL1", "pool1", (14, 14, 8), 1568, 0, ""),
        ("CONV2 (f=5, s=1)", "conv2", (10, 10, 16), 1600, 416,
         "5·5·8·16 + 16 = 3216; the notes' 5·5·16 + 16 = 416 leaves out the 8 input channels"),
        ("POOL2", "pool2", (5, 5, 16), 400, 0, ""),
        ("FC3", "fc3", (120, 1), 120, 48001, "400·120 + 120 = 48120; the notes' 400·120 + 1 = 48001 has one bias instead of 120"),
        ("FC4", "fc4", (84, 1), 84, 10081, "120·84 + 84 = 10164; the notes' 120·84 + 1 = 10081 has one bias instead of 84"),
        ("Softmax", "fc5", (10, 1), 10, 841, "84·10 + 10 = 850; the notes' 84·10 + 1 = 841 has one bias instead of 10"),
    ]
    for label, name, shape, size, params, reason in table:
        r = summary[name]
        notes_shape = [n for n in shape if not (len(shape) == 2 and n == 1)]  # (120,1) is a column vector of 120
        row("CNN example", f"{label}: activation shape", "notes", list(shape), list(r.shape),
            "the notes write vectors as columns (n,1); jaxconv as (n,)" if len(shape) == 2 else "",
            agrees=notes_shape == list(r.shape))
        row("CNN example", f"{label}: activation size", "notes", size, r.size)
        row("CNN example", f"{label}: # parameters", "notes", params, r.params, reason)

    # --- Why convolutions ------------------------------------------------------------------
    fc = _params(jaxconv.Dense(4704), (1, 3072))
    row("why convolutions", "fully connected 3072 -> 4704 (28·28·6): ~14M", "notes", 14_000_000, fc,
        "3072·4704 = 14,450,688 weights + 4,704 biases; '~14M' is right", agrees=round(fc / 1e6) == 14)
    row("why convolutions", "convolution 6 filters f=5 on 32x32x3: (5·5+1)·6", "notes", 156,
        _params(jaxconv.Conv2D(6, 5), (1, 32, 32, 3)),
        "(5·5·3 + 1)·6 = 456; the notes' (5·5 + 1)·6 = 156 leaves out the 3 input channels")
    out = (1, *jaxconv.summary(jaxconv.Conv2D(6, 5), (1, 32, 32, 3))[-1].shape)
    row("why convolutions", "convolution output 28x28x6 = 4704", "notes", [28, 28, 6], list(out[1:]))

    # --- Putting it together: J = (1/m) Σ L(ŷ, y) -----------------------------------------
    logits = jnp.asarray([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]], F32)
    y = jnp.asarray([0, 1])
    z = np.asarray(logits, np.float64)
    hand = float(np.mean([np.log(np.exp(z[i]).sum()) - z[i, y[i]] for i in range(2)]))
    row("cost", "J = (1/m) Σ L(ŷ, y) with softmax cross-entropy, 2 examples", "hand", round(hand, 6),
        round(float(jaxconv.cost(jaxconv.softmax_cross_entropy(logits, y))), 6))
    return rows


def short(v, width=60) -> str:
    s = json.dumps(v, separators=(",", ":"))
    return s if len(s) <= width else s[: width - 1] + "…"


def main(argv=None):
    p = _common.parser(__doc__, "runs/seed")
    args = p.parse_args(argv)
    out = _common.out_dir(args.out)
    rows = examples()

    header = ["example", "quantity", "notes say", "jaxconv computes", "agrees?"]
    table = [[r["example"], r["quantity"], short(r["notes"]), short(r["jaxconv"]), "yes" if r["agrees"] else "NO"]
             for r in rows]
    print(_common.format_table(header, table, align="lllll"))
    n_bad = sum(not r["agrees"] for r in rows)
    print(f"\n{len(rows) - n_bad} of {len(rows)} agree. Where they differ:")
    for r in rows:
        if not r["agrees"]:
            print(f"- {r['example']}, {r['quantity']}: notes {short(r['notes'])}, jaxconv {short(r['jaxconv'])}: {r['reason']}")

    csv_rows = [[r["example"], r["quantity"], r["source"], json.dumps(r["notes"]), json.dumps(r["jaxconv"]),
                 "yes" if r["agrees"] else "no", r["reason"]] for r in rows]
    _common.write_csv(os.path.join(out, "seed_examples.csv"),
                      ["example", "quantity", "source", "notes", "jaxconv", "agrees", "reason"], csv_rows)
    _common.write_json(os.path.join(out, "seed_examples.json"), rows)
    md = [
        "# The notes' worked examples, recomputed with jaxconv",
        "",
        "Generated by `python experiments/seed_examples.py`. Source: *notes* = in the notes' text, "
        "*lecture* = the lecture figure the notes show, *hand* = computed by hand from a filter the notes name.",
        "",
        f"{len(rows) - n_bad} of {len(rows)} agree.",
        "",
        _common.markdown_table(
            ["example", "quantity", "source", "notes say", "jaxconv computes", "agrees?", "why they differ / how"],
            [[r["example"], r["quantity"], r["source"], f"`{json.dumps(r['notes'])}`", f"`{json.dumps(r['jaxconv'])}`",
              "yes" if r["agrees"] else "**no**", r["reason"]] for r in rows]),
        "",
    ]
    with open(os.path.join(out, "seed_examples.md"), "w") as f:
        f.write("\n".join(md))
    print(f"\nwrote {out}/seed_examples.md, seed_examples.csv, seed_examples.json")
    return rows


if __name__ == "__main__":
    main()
