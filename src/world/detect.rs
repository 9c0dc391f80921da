//! Rule-based detector and caption judge (no learning: the world's own rules, inverted).

use super::scene::{CaptionSpec, parse_caption};
use super::{Colour, Position, SIZE_THRESHOLD, SMALL_RADIUS, Shape, Size};
use serde::{Deserialize, Serialize};

/// One object found in an image. Coordinates are fractions of the image width / height.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    /// Centre of the bounding box (the generator's notion of an object's centre).
    pub cx: f32,
    pub cy: f32,
    /// Area as a fraction of the image.
    pub area: f32,
    /// Estimated extent `R` (fraction of the image side; compare [`SIZE_THRESHOLD`]).
    pub radius: f32,
    /// Named region of the centre.
    pub position: Option<Position>,
    /// Bounding box in pixels, inclusive: `(x0, x1, y0, y1)`.
    pub bbox: (usize, usize, usize, usize),
    /// Intersection-over-union of the mask with the chosen ideal shape fitted to the box.
    pub shape_score: f32,
    /// Blur-invariant shape statistics `[skew_y, k4, k22]` the shape was chosen from.
    pub shape_stats: [f32; 3],
    /// Row-major pixel mask.
    pub mask: Vec<bool>,
}

fn hue_chroma(r: f32, g: f32, b: f32) -> (f32, f32) {
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let c = max - min;
    if c <= 0.0 {
        return (0.0, 0.0);
    }
    let h = if max == r {
        ((g - b) / c).rem_euclid(6.0)
    } else if max == g {
        (b - r) / c + 2.0
    } else {
        (r - g) / c + 4.0
    };
    (h * 60.0, c)
}

fn hue_distance(a: f32, b: f32) -> f32 {
    let d = (a - b).abs() % 360.0;
    d.min(360.0 - d)
}

/// Finds the objects in an RGB image (row-major, `width * height * 3` bytes; panics otherwise).
///
/// Method: a 3x3 box filter tames pixel noise; each pixel gets the palette colour nearest in
/// hue (blending a colour with the neutral background keeps its hue) and counts as that
/// colour's foreground when its chroma (max − min channel) is at least half the palette
/// colour's (i.e. the pixel is at least about half covered) and at least 30. 4-connected
/// components of one colour smaller than a quarter of the smallest small triangle are dropped
/// as specks. The shape comes from blur-invariant statistics of the component's soft coverage
/// (see `shape_statistics`): a clearly negative vertical skew (mass towards the base) means
/// the apex-up triangle; otherwise the fourth-order cumulants (`k4`, `k22`) pick the nearest of
/// circle, square and diamond. The extent `R` follows from the bounding box and the shape's
/// proportions, and the object is big when `R > SIZE_THRESHOLD`; the position is
/// [`Position::of`] the bounding-box centre. Detections are sorted by area, largest first.
pub fn detect(rgb: &[u8], width: usize, height: usize) -> Vec<Detection> {
    assert_eq!(rgb.len(), width * height * 3, "rgb buffer must be width * height * 3 bytes");
    let (w, h) = (width, height);
    // 3x3 box filter with clamped borders.
    let mut smooth = vec![0f32; w * h * 3];
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            let mut n = 0.0;
            for yy in y.saturating_sub(1)..=(y + 1).min(h - 1) {
                for xx in x.saturating_sub(1)..=(x + 1).min(w - 1) {
                    let j = (yy * w + xx) * 3;
                    for c in 0..3 {
                        acc[c] += rgb[j + c] as f32;
                    }
                    n += 1.0;
                }
            }
            for c in 0..3 {
                smooth[(y * w + x) * 3 + c] = acc[c] / n;
            }
        }
    }
    let palette: Vec<(Colour, f32, f32)> = Colour::ALL
        .iter()
        .map(|&c| {
            let [r, g, b] = c.rgb();
            let (hue, chroma) = hue_chroma(r as f32, g as f32, b as f32);
            (c, hue, chroma)
        })
        .collect();
    const NONE: u8 = u8::MAX;
    // Nearest palette hue of every clearly coloured pixel, and its chroma.
    let mut chroma = vec![0f32; w * h];
    let mut class = vec![NONE; w * h];
    let mut label = vec![NONE; w * h];
    for i in 0..w * h {
        let (hue, c) = hue_chroma(smooth[i * 3], smooth[i * 3 + 1], smooth[i * 3 + 2]);
        chroma[i] = c;
        if c < 20.0 {
            continue;
        }
        let (k, _) = palette
            .iter()
            .enumerate()
            .map(|(k, p)| (k, hue_distance(hue, p.1)))
            .fold((0, f32::MAX), |best, cur| if cur.1 < best.1 { cur } else { best });
        class[i] = k as u8;
        if c >= 30.0 && c >= 0.5 * palette[k].2 {
            label[i] = k as u8;
        }
    }
    // Speck threshold: a quarter of the smallest small triangle's area.
    let (thx, thy) = Shape::Triangle.half_extents(SMALL_RADIUS.0);
    let min_pixels = (0.25 * 2.0 * thx * thy * (w * h) as f32).max(4.0) as usize;
    const NO_COMPONENT: u32 = u32::MAX;
    let mut comp_id = vec![NO_COMPONENT; w * h];
    let mut seen = vec![false; w * h];
    let mut components: Vec<(u8, Vec<usize>)> = Vec::new();
    let mut stack = Vec::new();
    for start in 0..w * h {
        if seen[start] || label[start] == NONE {
            continue;
        }
        let k = label[start];
        let mut pixels = Vec::new();
        seen[start] = true;
        stack.push(start);
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if !seen[j] && label[j] == k {
                    seen[j] = true;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        if pixels.len() < min_pixels {
            continue;
        }
        for &i in &pixels {
            comp_id[i] = components.len() as u32;
        }
        components.push((k, pixels));
    }
    let ctx = Context {
        w,
        h,
        chroma: &chroma,
        class: &class,
        comp_id: &comp_id,
    };
    let mut out: Vec<Detection> = components
        .iter()
        .enumerate()
        .map(|(id, (k, pixels))| describe(palette[*k as usize].0, *k, id as u32, pixels, &ctx))
        .collect();
    out.sort_by(|a, b| b.area.total_cmp(&a.area));
    out
}

struct Context<'a> {
    w: usize,
    h: usize,
    chroma: &'a [f32],
    class: &'a [u8],
    comp_id: &'a [u32],
}

/// Blur-invariant shape statistics of a component from its soft coverage (chroma relative to
/// the component's full chroma) in a window around it: `(skew_y, k4, k22)`, the third
/// cumulant in y over `M^1.5`, the mean fourth cumulant of the x and y marginals over `M^2`,
/// and the mixed cumulant `k22` over `M^2` (`M`: the soft area). Symmetric blurs add to the
/// second cumulants only, so these survive blur.
fn shape_statistics(k: u8, id: u32, pixels: &[usize], bbox: (usize, usize, usize, usize), ctx: &Context) -> (f64, f64, f64) {
    let mut cs: Vec<f32> = pixels.iter().map(|&i| ctx.chroma[i]).collect();
    cs.sort_by(|a, b| a.total_cmp(b));
    let full = cs[(cs.len() * 9 / 10).min(cs.len() - 1)].max(1.0) as f64;
    let pad = 4;
    let (x0, x1) = (bbox.0.saturating_sub(pad), (bbox.1 + pad).min(ctx.w - 1));
    let (y0, y1) = (bbox.2.saturating_sub(pad), (bbox.3 + pad).min(ctx.h - 1));
    let mut pts = Vec::new();
    let (mut m, mut sx, mut sy) = (0f64, 0f64, 0f64);
    for y in y0..=y1 {
        for x in x0..=x1 {
            let i = y * ctx.w + x;
            if ctx.class[i] != k || (ctx.comp_id[i] != u32::MAX && ctx.comp_id[i] != id) {
                continue;
            }
            let a = (ctx.chroma[i] as f64 / full).min(1.0);
            let (fx, fy) = (x as f64 + 0.5, y as f64 + 0.5);
            m += a;
            sx += a * fx;
            sy += a * fy;
            pts.push((fx, fy, a));
        }
    }
    let (mx, my) = (sx / m, sy / m);
    let mut v = [0f64; 8]; // 20 02 11 40 04 22 03 (distribution moments)
    for &(x, y, a) in &pts {
        let (dx, dy) = (x - mx, y - my);
        let (dx2, dy2) = (dx * dx, dy * dy);
        v[0] += a * dx2;
        v[1] += a * dy2;
        v[2] += a * dx * dy;
        v[3] += a * dx2 * dx2;
        v[4] += a * dy2 * dy2;
        v[5] += a * dx2 * dy2;
        v[6] += a * dy2 * dy;
    }
    for t in &mut v {
        *t /= m;
    }
    let k4 = 0.5 * ((v[3] - 3.0 * v[0] * v[0]) + (v[4] - 3.0 * v[1] * v[1])) / (m * m);
    let k22 = (v[5] - v[0] * v[1] - 2.0 * v[2] * v[2]) / (m * m);
    let skew = v[6] / m.powf(1.5);
    (skew, k4, k22)
}

/// Shape statistics of the ideal shapes (see [`shape_statistics`]): circle, square, diamond.
const SHAPE_TARGETS: [(Shape, f64, f64); 3] = [
    (Shape::Circle, -0.006_332_6, -0.002_110_9),
    (Shape::Square, -0.008_333_3, 0.0),
    (Shape::Diamond, -0.004_166_7, -0.004_166_7),
];
/// The ideal apex-up triangle has `skew_y` ≈ −0.0169, the symmetric shapes 0.
const TRIANGLE_SKEW: f64 = -0.0085;

fn describe(colour: Colour, k: u8, id: u32, pixels: &[usize], ctx: &Context) -> Detection {
    let (w, h) = (ctx.w, ctx.h);
    let (mut x0, mut x1, mut y0, mut y1) = (usize::MAX, 0, usize::MAX, 0);
    let mut mask = vec![false; w * h];
    for &i in pixels {
        let (x, y) = (i % w, i / w);
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
        mask[i] = true;
    }
    let cxp = (x0 + x1 + 1) as f32 / 2.0;
    let cyp = (y0 + y1 + 1) as f32 / 2.0;
    let hw = (x1 + 1 - x0) as f32 / 2.0;
    let hh = (y1 + 1 - y0) as f32 / 2.0;
    let (skew, k4, k22) = shape_statistics(k, id, pixels, (x0, x1, y0, y1), ctx);
    let shape = if skew < TRIANGLE_SKEW {
        Shape::Triangle
    } else {
        SHAPE_TARGETS
            .iter()
            .map(|&(s, a, b)| (s, (k4 - a).powi(2) + (k22 - b).powi(2)))
            .fold((Shape::Circle, f64::MAX), |best, cur| if cur.1 < best.1 { cur } else { best })
            .0
    };
    // IoU of the mask with the chosen shape stretched to the bounding box.
    let (mut inter, mut tmpl) = (0usize, 0usize);
    for y in y0..=y1 {
        let v = (y as f32 + 0.5 - cyp) / hh;
        for x in x0..=x1 {
            let u = (x as f32 + 0.5 - cxp) / hw;
            if shape.contains_unit(u, v) {
                tmpl += 1;
                inter += mask[y * w + x] as usize;
            }
        }
    }
    let shape_score = inter as f32 / (pixels.len() + tmpl - inter) as f32;
    let (kx, ky) = shape.half_extents(1.0);
    let radius = 0.5 * (hw / w as f32 / kx + hh / h as f32 / ky);
    let (cx, cy) = (cxp / w as f32, cyp / h as f32);
    Detection {
        colour,
        shape,
        size: if radius > SIZE_THRESHOLD { Size::Big } else { Size::Small },
        cx,
        cy,
        area: pixels.len() as f32 / (w * h) as f32,
        radius,
        position: Position::of(cx, cy),
        bbox: (x0, x1, y0, y1),
        shape_score,
        shape_stats: [skew as f32, k4 as f32, k22 as f32],
        mask,
    }
}

/// How one object of a caption fared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ObjectJudgement {
    /// Index of the detection matched to this object (`None`: nothing left to match).
    pub detection: Option<usize>,
    pub colour: bool,
    pub shape: bool,
    /// `None` when the caption does not state a size.
    pub size: Option<bool>,
    /// `None` when the caption does not state a position.
    pub position: Option<bool>,
}

impl ObjectJudgement {
    /// Colour, shape and every stated attribute hold.
    pub fn correct(&self) -> bool {
        self.colour && self.shape && self.size != Some(false) && self.position != Some(false)
    }
}

/// Verdict on an image generated from a caption.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Judgement {
    /// Set when the caption does not follow a template (everything else is then false/empty).
    pub parse_error: Option<String>,
    /// Per caption object, in caption order.
    pub objects: Vec<ObjectJudgement>,
    /// For two-object captions: whether the relation holds between the matched detections.
    pub relation: Option<bool>,
    /// Whether the image holds exactly as many objects as the caption names.
    pub count: bool,
    /// Every stated attribute (and the relation) holds; extra objects are tolerated.
    pub all_correct: bool,
}

impl Judgement {
    /// `all_correct` and no extra objects.
    pub fn strict_correct(&self) -> bool {
        self.all_correct && self.count
    }
}

/// Judges detections against a caption (see [`judge_spec`]); a caption that does not parse
/// gives a judgement with `parse_error` set.
pub fn judge(caption: &str, detections: &[Detection]) -> Judgement {
    match parse_caption(caption) {
        Ok(spec) => judge_spec(&spec, detections),
        Err(e) => Judgement {
            parse_error: Some(e.to_string()),
            ..Default::default()
        },
    }
}

fn judge_object(spec: &super::ObjectSpec, det: Option<(usize, &Detection)>) -> ObjectJudgement {
    match det {
        None => ObjectJudgement {
            detection: None,
            size: spec.size.map(|_| false),
            position: spec.position.map(|_| false),
            ..Default::default()
        },
        Some((i, d)) => ObjectJudgement {
            detection: Some(i),
            colour: d.colour == spec.colour,
            shape: d.shape == spec.shape,
            size: spec.size.map(|s| s == d.size),
            position: spec.position.map(|p| d.position == Some(p)),
        },
    }
}

fn score(j: &ObjectJudgement) -> u32 {
    4 * j.colour as u32
        + 2 * j.shape as u32
        + (j.size == Some(true)) as u32
        + (j.position == Some(true)) as u32
        + j.detection.is_some() as u32
}

/// Judges detections against a parsed caption: each caption object is matched to the
/// detection (distinct for two objects) that satisfies the most of its attributes (colour
/// weighs most, then shape, then the relation); ties go to the larger detection.
pub fn judge_spec(spec: &CaptionSpec, detections: &[Detection]) -> Judgement {
    let options: Vec<Option<(usize, &Detection)>> = std::iter::once(None).chain(detections.iter().enumerate().map(Some)).collect();
    let mut best: Option<(u32, Vec<ObjectJudgement>, Option<bool>)> = None;
    let mut consider = |objs: Vec<ObjectJudgement>, rel: Option<bool>| {
        let s = objs.iter().map(score).sum::<u32>() * 2 + 3 * (rel == Some(true)) as u32;
        if best.as_ref().is_none_or(|b| s > b.0) {
            best = Some((s, objs, rel));
        }
    };
    match spec.relation {
        None => {
            for &o in &options {
                consider(vec![judge_object(&spec.objects[0], o)], None);
            }
        }
        Some(rel) => {
            for &a in &options {
                for &b in &options {
                    if let (Some((i, _)), Some((j, _))) = (a, b)
                        && i == j
                    {
                        continue;
                    }
                    let holds = match (a, b) {
                        (Some((_, da)), Some((_, db))) => rel.holds((da.cx, da.cy), (db.cx, db.cy)),
                        _ => false,
                    };
                    consider(
                        vec![judge_object(&spec.objects[0], a), judge_object(&spec.objects[1], b)],
                        Some(holds),
                    );
                }
            }
        }
    }
    let (_, objects, relation) = best.expect("at least one assignment");
    let all_correct = objects.iter().all(|o| o.correct()) && relation != Some(false);
    Judgement {
        parse_error: None,
        count: detections.len() == spec.objects.len(),
        objects,
        relation,
        all_correct,
    }
}
