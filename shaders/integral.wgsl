// Integral images of an 8-bit image (one pixel per u32), OpenCV's layout: (h + 1) rows of
// (w + 1) entries with a zero first row and column.
//   sum[Y][X]    = sum of pixels above and left of (X, Y)
//   sqsum[Y][X]  = the same over squared pixels
//   tilted[Y][X] = sum of pixels (x, y) with y < Y and |x - (X - 1)| <= Y - 1 - y
// All in u32 with wrap-around, like OpenCV's CV_32S buffers: a window's four-corner difference
// is exact as long as its true value fits 32 bits, however large the image is.
//
// The upright tables take two passes, a scan along each row then one down each column. The
// tilted table needs the row prefix sums P(y, k) (clamped outside the row) summed along the
// two diagonals: row y contributes P(y, X + Y - 2 - y) - P(y, X - Y - 1 + y), so
//   tilted[Y][X] = A[Y][X + Y - 2] - B[Y][X - Y - 1],
//   A[Y][c] = A[Y - 1][c] + P(Y - 1, c - Y + 1),   B[Y][c] = B[Y - 1][c] + P(Y - 1, c + Y - 1),
// one independent scan per diagonal instead of OpenCV's row-by-row recurrence.

//
// Every level of a batch in one dispatch per pass: `levels` gives each level's size and where
// its image, tables and scratch start; a thread finds its level by a binary search over the
// levels' running counts of the pass's items (rows, columns, diagonals or entries), then works
// as if its level were the only image, through `lv`.

// The batch's item counts per pass.
struct Params { levels: u32, rows: u32, cols: u32, image_rows: u32, diagonals: u32, entries: u32, _pad0: u32, _pad1: u32 }

struct Level {
    w: u32, h: u32,
    img_at: u32, tables_at: u32, scratch_at: u32,
    // Items of the batch's earlier levels, per pass.
    rows_before: u32, cols_before: u32, image_rows_before: u32, diagonals_before: u32, entries_before: u32,
    _pad0: u32, _pad1: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> img: array<u32>;
// Per level: sum, then sqsum, then tilted, each (h + 1) * (w + 1).
@group(0) @binding(2) var<storage, read_write> tables: array<u32>;
// Per level: row prefix sums (w * h), then the A and B diagonal scans ((h + 1) * (w + h + 1) each).
@group(0) @binding(3) var<storage, read_write> scratch: array<u32>;
@group(0) @binding(4) var<storage, read> levels: array<Level>;

// The level this thread works on.
var<private> lv: Level;

fn level(l: u32) -> Level {
    return levels[min(l, arrayLength(&levels) - 1u)];
}

// Sets `lv` to the level holding item t of a pass (`kind`: 0 table rows, 1 table columns,
// 2 image rows, 3 diagonals, 4 table entries) and returns t's index within it.
fn find_level(t: u32, kind: u32) -> u32 {
    var lo = 0u;
    var hi = p.levels;
    while (hi - lo > 1u) {
        let mid = (lo + hi) / 2u;
        if (before(level(mid), kind) <= t) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lv = level(lo);
    return t - before(lv, kind);
}

fn before(l: Level, kind: u32) -> u32 {
    switch kind {
        case 0u: { return l.rows_before; }
        case 1u: { return l.cols_before; }
        case 2u: { return l.image_rows_before; }
        case 3u: { return l.diagonals_before; }
        default: { return l.entries_before; }
    }
}

fn pixel(x: u32, y: u32) -> u32 {
    let i = lv.img_at + y * lv.w + x;
    return select(0u, img[min(i, arrayLength(&img) - 1u)], x < lv.w && y < lv.h);
}

fn table_len() -> u32 {
    return (lv.w + 1u) * (lv.h + 1u);
}

// Entry i of the level's tables.
fn put(i: u32, v: u32) {
    let at = lv.tables_at + i;
    if (at < arrayLength(&tables)) {
        tables[at] = v;
    }
}

fn table_at(i: u32) -> u32 {
    let at = lv.tables_at + i;
    return select(0u, tables[min(at, arrayLength(&tables) - 1u)], at < arrayLength(&tables));
}

// Entry i of the level's scratch.
fn scratch_get(i: u32) -> u32 {
    return scratch[min(lv.scratch_at + i, arrayLength(&scratch) - 1u)];
}

fn scratch_put(i: u32, v: u32) {
    let at = lv.scratch_at + i;
    if (at < arrayLength(&scratch)) {
        scratch[at] = v;
    }
}

// One thread per table row: row 0 is zero, row y + 1 gets the running sums of image row y.
@compute @workgroup_size(64)
fn upright_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.rows) {
        return;
    }
    let r = find_level(t, 0u);
    let iw = lv.w + 1u;
    let n = table_len();
    put(r * iw, 0u);
    put(n + r * iw, 0u);
    var s = 0u;
    var q = 0u;
    for (var x = 0u; x < lv.w; x++) {
        if (r > 0u) {
            let v = pixel(x, r - 1u);
            s += v;
            q += v * v;
        }
        put(r * iw + x + 1u, s);
        put(n + r * iw + x + 1u, q);
    }
}

// One thread per table column: accumulate the row sums downwards, in both tables.
@compute @workgroup_size(64)
fn upright_cols(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = linear_index(wid, nwg, lid, 64u);
    if (u >= p.cols) {
        return;
    }
    let t = find_level(u, 1u);
    let iw = lv.w + 1u;
    let start = (t / iw) * table_len() + t % iw;
    var acc = 0u;
    for (var y = 0u; y <= lv.h; y++) {
        let i = start + y * iw;
        acc += table_at(i);
        put(i, acc);
    }
}

fn prefix(y: u32, k: i32) -> u32 {
    if (k < 0 || lv.w == 0u) {
        return 0u;
    }
    return scratch_get(y * lv.w + min(u32(k), lv.w - 1u));
}

// One thread per image row: inclusive prefix sums P(y, x).
@compute @workgroup_size(64)
fn tilted_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    if (t >= p.image_rows) {
        return;
    }
    let y = find_level(t, 2u);
    var s = 0u;
    for (var x = 0u; x < lv.w; x++) {
        s += pixel(x, y);
        scratch_put(y * lv.w + x, s);
    }
}

// One thread per diagonal: the A scans (c = X + Y - 2 in -2..=w+h-2) then the B scans
// (c = X - Y - 1 in -h-1..=w-1), each stored as (h + 1) rows of w + h + 1.
@compute @workgroup_size(64)
fn tilted_diagonals(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = linear_index(wid, nwg, lid, 64u);
    if (u >= p.diagonals) {
        return;
    }
    let t = find_level(u, 3u);
    let dw = lv.w + lv.h + 1u;
    let is_b = t >= dw;
    let slot = t % dw;
    let c = select(i32(slot) - 2, i32(slot) - i32(lv.h) - 1, is_b);
    let base = lv.w * lv.h + select(0u, (lv.h + 1u) * dw, is_b) + slot;
    var acc = 0u;
    for (var y = 0u; y <= lv.h; y++) {
        if (y > 0u) {
            let k = select(c - i32(y) + 1, c + i32(y) - 1, is_b);
            acc += prefix(y - 1u, k);
        }
        scratch_put(base + y * dw, acc);
    }
}

// One thread per tilted entry: tilted[Y][X] = A[Y][X + Y - 2] - B[Y][X - Y - 1].
@compute @workgroup_size(64)
fn tilted_assemble(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let u = linear_index(wid, nwg, lid, 64u);
    if (u >= p.entries) {
        return;
    }
    let i = find_level(u, 4u);
    let iw = lv.w + 1u;
    let x = i % iw;
    let y = i / iw;
    let dw = lv.w + lv.h + 1u;
    let a = lv.w * lv.h + y * dw + x + y;                            // slot of c = X + Y - 2 is c + 2
    let b = lv.w * lv.h + (lv.h + 1u) * dw + y * dw + x + lv.h - y;  // slot of c = X - Y - 1 is c + h + 1
    put(2u * table_len() + i, scratch_get(a) - scratch_get(b));
}
