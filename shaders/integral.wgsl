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

struct Params { w: u32, h: u32, _pad0: u32, _pad1: u32 }

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> img: array<u32>;
// sum, then sqsum, then tilted, each (h + 1) * (w + 1).
@group(0) @binding(2) var<storage, read_write> tables: array<u32>;
// Row prefix sums (w * h), then the A and B diagonal scans ((h + 1) * (w + h + 1) each).
@group(0) @binding(3) var<storage, read_write> scratch: array<u32>;

fn pixel(x: u32, y: u32) -> u32 {
    let i = y * p.w + x;
    return select(0u, img[min(i, arrayLength(&img) - 1u)], x < p.w && y < p.h);
}

fn table_len() -> u32 {
    return (p.w + 1u) * (p.h + 1u);
}

fn put(i: u32, v: u32) {
    if (i < arrayLength(&tables)) {
        tables[i] = v;
    }
}

fn table_at(i: u32) -> u32 {
    return select(0u, tables[min(i, arrayLength(&tables) - 1u)], i < arrayLength(&tables));
}

// One thread per table row: row 0 is zero, row y + 1 gets the running sums of image row y.
@compute @workgroup_size(64)
fn upright_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let r = linear_index(wid, nwg, lid, 64u);
    if (r > p.h) {
        return;
    }
    let iw = p.w + 1u;
    let n = table_len();
    put(r * iw, 0u);
    put(n + r * iw, 0u);
    var s = 0u;
    var q = 0u;
    for (var x = 0u; x < p.w; x++) {
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
    let t = linear_index(wid, nwg, lid, 64u);
    let iw = p.w + 1u;
    if (t >= 2u * iw) {
        return;
    }
    let start = (t / iw) * table_len() + t % iw;
    var acc = 0u;
    for (var y = 0u; y <= p.h; y++) {
        let i = start + y * iw;
        acc += table_at(i);
        put(i, acc);
    }
}

fn prefix(y: u32, k: i32) -> u32 {
    if (k < 0 || p.w == 0u) {
        return 0u;
    }
    let i = y * p.w + min(u32(k), p.w - 1u);
    return scratch[min(i, arrayLength(&scratch) - 1u)];
}

// One thread per image row: inclusive prefix sums P(y, x).
@compute @workgroup_size(64)
fn tilted_rows(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let y = linear_index(wid, nwg, lid, 64u);
    if (y >= p.h) {
        return;
    }
    var s = 0u;
    for (var x = 0u; x < p.w; x++) {
        s += pixel(x, y);
        let i = y * p.w + x;
        if (i < arrayLength(&scratch)) {
            scratch[i] = s;
        }
    }
}

// One thread per diagonal: the A scans (c = X + Y - 2 in -2..=w+h-2) then the B scans
// (c = X - Y - 1 in -h-1..=w-1), each stored as (h + 1) rows of w + h + 1.
@compute @workgroup_size(64)
fn tilted_diagonals(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let t = linear_index(wid, nwg, lid, 64u);
    let dw = p.w + p.h + 1u;
    if (t >= 2u * dw) {
        return;
    }
    let is_b = t >= dw;
    let slot = t % dw;
    let c = select(i32(slot) - 2, i32(slot) - i32(p.h) - 1, is_b);
    let base = p.w * p.h + select(0u, (p.h + 1u) * dw, is_b) + slot;
    var acc = 0u;
    for (var y = 0u; y <= p.h; y++) {
        if (y > 0u) {
            let k = select(c - i32(y) + 1, c + i32(y) - 1, is_b);
            acc += prefix(y - 1u, k);
        }
        let i = base + y * dw;
        if (i < arrayLength(&scratch)) {
            scratch[i] = acc;
        }
    }
}

// One thread per tilted entry: tilted[Y][X] = A[Y][X + Y - 2] - B[Y][X - Y - 1].
@compute @workgroup_size(64)
fn tilted_assemble(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
    let i = linear_index(wid, nwg, lid, 64u);
    if (i >= table_len()) {
        return;
    }
    let iw = p.w + 1u;
    let x = i % iw;
    let y = i / iw;
    let dw = p.w + p.h + 1u;
    let a = p.w * p.h + y * dw + x + y;                          // slot of c = X + Y - 2 is c + 2
    let b = p.w * p.h + (p.h + 1u) * dw + y * dw + x + p.h - y;  // slot of c = X - Y - 1 is c + h + 1
    let last = arrayLength(&scratch) - 1u;
    put(2u * table_len() + i, scratch[min(a, last)] - scratch[min(b, last)]);
}
