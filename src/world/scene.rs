//! Captions, their parsing, scene generation and layout, and the held-out rule.

use super::rng::{Rng, fnv1a, mix64};
use super::{
    BIG_RADIUS, BORDER_MARGIN, Background, Colour, HELD_OUT_PER_MILLE, OBJECT_GAP, Object, Position, REGION_MARGIN, Relation, SMALL_RADIUS,
    Scene, Shape, Size, Template, WorldConfig, WorldError,
};
use serde::{Deserialize, Serialize};

/// What a caption says about one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ObjectSpec {
    pub colour: Colour,
    pub shape: Shape,
    /// Stated size, if the caption says one.
    pub size: Option<Size>,
    /// Stated position, if the caption says one.
    pub position: Option<Position>,
}

/// The constraints a caption states: one object (with optional size and position), or two
/// objects and the relation of the first to the second.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CaptionSpec {
    pub objects: Vec<ObjectSpec>,
    pub relation: Option<Relation>,
}

impl CaptionSpec {
    /// A single-object spec.
    pub fn single(colour: Colour, shape: Shape, size: Option<Size>, position: Option<Position>) -> Self {
        CaptionSpec {
            objects: vec![ObjectSpec {
                colour,
                shape,
                size,
                position,
            }],
            relation: None,
        }
    }
    /// A two-object spec: `a {c0} {s0} {relation} a {c1} {s1}`.
    pub fn pair(first: (Colour, Shape), relation: Relation, second: (Colour, Shape)) -> Self {
        let o = |(colour, shape)| ObjectSpec {
            colour,
            shape,
            size: None,
            position: None,
        };
        CaptionSpec {
            objects: vec![o(first), o(second)],
            relation: Some(relation),
        }
    }
    /// The template this spec's caption follows.
    pub fn template(&self) -> Template {
        if self.relation.is_some() {
            return Template::Relation;
        }
        let o = &self.objects[0];
        match (o.size.is_some(), o.position.is_some()) {
            (false, false) => Template::Colour,
            (true, false) => Template::SizeColour,
            (false, true) => Template::ColourPosition,
            (true, true) => Template::SizeColourPosition,
        }
    }
    /// The caption text.
    pub fn caption(&self) -> String {
        caption_words(self).0.join(" ")
    }
    /// Whether this caption is reserved for evaluation (see [`is_held_out`]).
    pub fn is_held_out(&self) -> bool {
        held_out_caption(&self.caption())
    }
    fn check(&self) -> Result<(), String> {
        match (self.objects.len(), self.relation) {
            (1, None) => Ok(()),
            (2, Some(_)) => {
                if self.objects.iter().any(|o| o.size.is_some() || o.position.is_some()) {
                    Err("two-object captions state neither size nor position".into())
                } else {
                    Ok(())
                }
            }
            (n, r) => Err(format!("{n} objects with relation {r:?}")),
        }
    }
}

/// The caption's words and, for each, the object it describes.
pub fn caption_words(spec: &CaptionSpec) -> (Vec<String>, Vec<Option<usize>>) {
    let mut words = Vec::new();
    let mut owner = Vec::new();
    let mut push = |w: &str, o: Option<usize>| {
        words.push(w.to_string());
        owner.push(o);
    };
    let object = |push: &mut dyn FnMut(&str, Option<usize>), i: usize, o: &ObjectSpec| {
        push("a", None);
        if let Some(s) = o.size {
            push(s.name(), Some(i));
        }
        push(o.colour.name(), Some(i));
        push(o.shape.name(), Some(i));
    };
    object(&mut push, 0, &spec.objects[0]);
    match spec.relation {
        Some(rel) => {
            for w in rel.name().split(' ') {
                push(w, None);
            }
            object(&mut push, 1, &spec.objects[1]);
        }
        None => {
            if let Some(p) = spec.objects[0].position {
                push("on", None);
                push("the", None);
                push(p.name(), Some(0));
            }
        }
    }
    (words, owner)
}

/// Parses a caption of one of the five templates (surrounding whitespace and ASCII case are
/// ignored; words may be separated by any whitespace) into the constraints it states.
pub fn parse_caption(caption: &str) -> Result<CaptionSpec, WorldError> {
    let lower = caption.to_ascii_lowercase();
    let mut p = Parser {
        caption,
        words: lower.split_whitespace().collect(),
        i: 0,
    };
    let mut first = p.object()?;
    let spec = match p.peek() {
        None => CaptionSpec {
            objects: vec![first],
            relation: None,
        },
        Some("on") => {
            p.i += 1;
            p.expect("the")?;
            let w = p.next("a position")?;
            first.position = Some(Position::from_name(w).ok_or_else(|| p.err(format!("{w:?} is not a position")))?);
            CaptionSpec {
                objects: vec![first],
                relation: None,
            }
        }
        Some(w) => {
            p.i += 1;
            let relation = match w {
                "left" | "right" => {
                    p.expect("of")?;
                    if w == "left" { Relation::LeftOf } else { Relation::RightOf }
                }
                "above" => Relation::Above,
                "below" => Relation::Below,
                _ => return Err(p.err(format!("expected \"on\" or a relation, found {w:?}"))),
            };
            let second = p.object()?;
            if first.size.is_some() || second.size.is_some() {
                return Err(p.err("two-object captions do not state sizes".into()));
            }
            CaptionSpec {
                objects: vec![first, second],
                relation: Some(relation),
            }
        }
    };
    if let Some(w) = p.peek() {
        return Err(p.err(format!("unexpected trailing word {w:?}")));
    }
    Ok(spec)
}

struct Parser<'a> {
    caption: &'a str,
    words: Vec<&'a str>,
    i: usize,
}

impl<'a> Parser<'a> {
    fn err(&self, reason: String) -> WorldError {
        WorldError::BadCaption {
            caption: self.caption.to_string(),
            reason,
        }
    }
    fn peek(&self) -> Option<&'a str> {
        self.words.get(self.i).copied()
    }
    fn next(&mut self, what: &str) -> Result<&'a str, WorldError> {
        let w = self.peek().ok_or_else(|| self.err(format!("ended where {what} was expected")))?;
        self.i += 1;
        Ok(w)
    }
    fn expect(&mut self, word: &str) -> Result<(), WorldError> {
        let w = self.next(&format!("{word:?}"))?;
        if w != word {
            return Err(self.err(format!("expected {word:?}, found {w:?}")));
        }
        Ok(())
    }
    fn object(&mut self) -> Result<ObjectSpec, WorldError> {
        self.expect("a")?;
        let mut w = self.next("a colour")?;
        let size = Size::from_name(w);
        if size.is_some() {
            w = self.next("a colour")?;
        }
        let colour = Colour::from_name(w).ok_or_else(|| self.err(format!("{w:?} is not a colour")))?;
        let w = self.next("a shape")?;
        let shape = Shape::from_name(w).ok_or_else(|| self.err(format!("{w:?} is not a shape")))?;
        Ok(ObjectSpec {
            colour,
            shape,
            size,
            position: None,
        })
    }
}

/// Salt of the held-out hash (chosen so every template keeps captions on both sides).
const HELD_OUT_SALT: u64 = 0x5348_4150_4553_0001; // "SHAPES" + 1

fn held_out_caption(canonical: &str) -> bool {
    let h = mix64(fnv1a(canonical.as_bytes()) ^ HELD_OUT_SALT);
    h % 1000 < HELD_OUT_PER_MILLE
}

/// Whether the scene's caption is reserved for evaluation: a hash of its canonical caption
/// (equivalently, of its template and stated attribute tuple) falls in the lowest 10%.
pub fn is_held_out(scene: &Scene) -> bool {
    scene.spec().is_held_out()
}

/// Every caption spec of a template, in a fixed order. Two-object specs never repeat the same
/// colour and shape.
pub fn all_specs(template: Template) -> Vec<CaptionSpec> {
    let mut out = Vec::new();
    for &colour in Colour::ALL {
        for &shape in Shape::ALL {
            match template {
                Template::Relation => {
                    for &rel in Relation::ALL {
                        for &c2 in Colour::ALL {
                            for &s2 in Shape::ALL {
                                if (c2, s2) != (colour, shape) {
                                    out.push(CaptionSpec::pair((colour, shape), rel, (c2, s2)));
                                }
                            }
                        }
                    }
                }
                t => {
                    let sizes: Vec<Option<Size>> = if t.states_size() {
                        Size::ALL.iter().map(|&s| Some(s)).collect()
                    } else {
                        vec![None]
                    };
                    let positions: Vec<Option<Position>> = if t.states_position() {
                        Position::ALL.iter().map(|&p| Some(p)).collect()
                    } else {
                        vec![None]
                    };
                    for &size in &sizes {
                        for &position in &positions {
                            out.push(CaptionSpec::single(colour, shape, size, position));
                        }
                    }
                }
            }
        }
    }
    out
}

/// `n` held-out captions, cycling through the five templates (each template's held-out
/// captions are shuffled with `seed` and used in turn, so repeats happen only after all of a
/// template's held-out captions have been listed).
pub fn eval_captions(n: usize, seed: u64) -> Vec<String> {
    let mut rng = Rng::new(super::rng::seed_of(&[seed, 0xE7A1]));
    let mut pools: Vec<Vec<String>> = Template::ALL
        .iter()
        .map(|&t| {
            let mut v: Vec<String> = all_specs(t).iter().filter(|s| s.is_held_out()).map(|s| s.caption()).collect();
            for i in (1..v.len()).rev() {
                v.swap(i, rng.below(i + 1));
            }
            v
        })
        .collect();
    pools.retain(|p| !p.is_empty());
    (0..n)
        .map(|i| {
            let pool = &pools[i % pools.len()];
            pool[(i / pools.len()) % pool.len()].clone()
        })
        .collect()
}

/// Draws a random scene (template, attributes, layout, background) for `config`.
pub fn generate_scene(config: &WorldConfig, rng: &mut Rng) -> Scene {
    let template = if rng.f32() < config.two_object_fraction {
        Template::Relation
    } else {
        Template::ALL[rng.below(4)]
    };
    let spec = if template == Template::Relation {
        let first = (rng.pick(Colour::ALL), rng.pick(Shape::ALL));
        let second = loop {
            let s = (rng.pick(Colour::ALL), rng.pick(Shape::ALL));
            if s != first {
                break s;
            }
        };
        CaptionSpec::pair(first, rng.pick(Relation::ALL), second)
    } else {
        let size = rng.pick(Size::ALL);
        let position = rng.pick(Position::ALL);
        CaptionSpec::single(
            rng.pick(Colour::ALL),
            rng.pick(Shape::ALL),
            template.states_size().then_some(size),
            template.states_position().then_some(position),
        )
    };
    scene_from_spec(&spec, config.texture, rng).expect("every spec can be laid out")
}

fn radius_for(size: Size, rng: &mut Rng) -> f32 {
    let (lo, hi) = if size == Size::Small { SMALL_RADIUS } else { BIG_RADIUS };
    rng.range(lo, hi)
}

/// Lays out a scene that makes `spec` true, choosing unstated attributes (size, position,
/// exact placement) and the background with `rng`.
pub fn scene_from_spec(spec: &CaptionSpec, texture: bool, rng: &mut Rng) -> Result<Scene, WorldError> {
    spec.check().map_err(WorldError::Layout)?;
    let objects = match spec.relation {
        None => {
            let o = spec.objects[0];
            let size = o.size.unwrap_or_else(|| rng.pick(Size::ALL));
            let position = o.position.unwrap_or_else(|| rng.pick(Position::ALL));
            let radius = radius_for(size, rng);
            let (hx, hy) = o.shape.half_extents(radius);
            let (x0, x1, y0, y1) = position.region();
            let lx = (x0 + REGION_MARGIN).max(BORDER_MARGIN + hx);
            let ux = (x1 - REGION_MARGIN).min(1.0 - BORDER_MARGIN - hx);
            let ly = (y0 + REGION_MARGIN).max(BORDER_MARGIN + hy);
            let uy = (y1 - REGION_MARGIN).min(1.0 - BORDER_MARGIN - hy);
            if lx > ux || ly > uy {
                return Err(WorldError::Layout(format!("{} {} does not fit {}", size, o.shape, position)));
            }
            let (cx, cy) = (rng.range(lx, ux), rng.range(ly, uy));
            vec![Object {
                colour: o.colour,
                shape: o.shape,
                size,
                cx,
                cy,
                radius,
            }]
        }
        Some(rel) => {
            let mut placed = None;
            for attempt in 0..32 {
                let sizes = if attempt < 24 {
                    [rng.pick(Size::ALL), rng.pick(Size::ALL)]
                } else {
                    [Size::Small, Size::Small]
                };
                let radii = [radius_for(sizes[0], rng), radius_for(sizes[1], rng)];
                let ha = spec.objects[0].shape.half_extents(radii[0]);
                let hb = spec.objects[1].shape.half_extents(radii[1]);
                if let Some((pa, pb)) = layout_pair(ha, hb, rel, rng) {
                    placed = Some((sizes, radii, pa, pb));
                    break;
                }
            }
            let (sizes, radii, pa, pb) = placed.ok_or_else(|| WorldError::Layout(format!("cannot place {}", spec.caption())))?;
            let mk = |i: usize, p: (f32, f32)| Object {
                colour: spec.objects[i].colour,
                shape: spec.objects[i].shape,
                size: sizes[i],
                cx: p.0,
                cy: p.1,
                radius: radii[i],
            };
            vec![mk(0, pa), mk(1, pb)]
        }
    };
    let (words, word_object) = caption_words(spec);
    Ok(Scene {
        objects,
        template: spec.template(),
        relation: spec.relation,
        caption: words.join(" "),
        words,
        word_object,
        background: random_background(texture, rng),
    })
}

/// Places A (half extents `a`) and B (`b`) so that "A {rel} B" holds with a clear gap.
fn layout_pair(a: (f32, f32), b: (f32, f32), rel: Relation, rng: &mut Rng) -> Option<((f32, f32), (f32, f32))> {
    let (ax, ay) = rel.axis();
    let horizontal = ax != 0.0;
    let b_after = ax + ay > 0.0; // B has the larger coordinate along the axis
    let (lo, hi) = if b_after { (a, b) } else { (b, a) };
    let along = |h: (f32, f32)| if horizontal { h.0 } else { h.1 };
    let across = |h: (f32, f32)| if horizontal { h.1 } else { h.0 };
    let m = BORDER_MARGIN;
    let dmin = along(lo) + along(hi) + OBJECT_GAP;
    let dmax = 1.0 - 2.0 * m - along(lo) - along(hi);
    if dmin > dmax {
        return None;
    }
    for _ in 0..64 {
        let d = rng.range(dmin, dmax);
        let p = rng.range(m + along(lo), 1.0 - m - along(hi) - d);
        let q_lo = rng.range(m + across(lo), 1.0 - m - across(lo));
        let off_min = (-0.35 * d).max(m + across(hi) - q_lo);
        let off_max = (0.35 * d).min(1.0 - m - across(hi) - q_lo);
        if off_min > off_max {
            continue;
        }
        let q_hi = q_lo + rng.range(off_min, off_max);
        let to_xy = |al: f32, ac: f32| if horizontal { (al, ac) } else { (ac, al) };
        let (plo, phi) = (to_xy(p, q_lo), to_xy(p + d, q_hi));
        return Some(if b_after { (plo, phi) } else { (phi, plo) });
    }
    None
}

fn random_background(texture: bool, rng: &mut Rng) -> Background {
    let l = rng.range(218.0, 243.0);
    let mut base = [0u8; 3];
    for c in &mut base {
        *c = (l + rng.range(-5.0, 5.0)).round() as u8;
    }
    if !texture || rng.below(4) == 0 {
        return Background { base, ..Background::PLAIN };
    }
    let (gx, gy) = loop {
        let (x, y) = (rng.range(-1.0, 1.0), rng.range(-1.0, 1.0));
        let n2 = x * x + y * y;
        if (0.04..=1.0).contains(&n2) {
            let n = n2.sqrt();
            break (x / n, y / n);
        }
    };
    Background {
        base,
        gradient_dir: [gx, gy],
        gradient_amp: rng.range(0.0, 14.0),
        noise_amp: rng.range(0.0, 8.0),
        grain_amp: rng.range(0.0, 3.0),
        seed: rng.next_u64(),
    }
}

pub(crate) fn spec_of(scene: &Scene) -> CaptionSpec {
    let t = scene.template;
    let objects = scene
        .objects
        .iter()
        .map(|o| ObjectSpec {
            colour: o.colour,
            shape: o.shape,
            size: t.states_size().then_some(o.size),
            position: if t.states_position() { o.position() } else { None },
        })
        .collect();
    CaptionSpec {
        objects,
        relation: scene.relation,
    }
}
