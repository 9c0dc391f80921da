//! The procedural "shapes world": the dataset the bundled text-to-image model is trained on,
//! and a rule-based detector that judges images generated from its captions.
//!
//! Everything here is pure and deterministic: a `(seed, index)` pair gives the same scene,
//! caption and pixels on every platform (a tiny SplitMix64 PRNG lives in [`rng`]; no floats
//! are hashed, and rendering uses only `f32` arithmetic on values derived from that PRNG).
//!
//! # The world
//!
//! An image (square, [`WorldConfig::size`] pixels a side, 128 by default, 64 also supported)
//! shows one or two flat-coloured objects on a light, low-saturation background that is either
//! plain or lightly textured (a gentle linear gradient plus low-contrast smooth value noise and
//! a little per-pixel grain, all derived from the scene's [`Background`]).
//!
//! * Colours ([`Colour`]): red, orange, yellow, green, blue, purple — saturated colours whose hues
//!   are far apart, so the detector can name them from hue alone (the background is neutral, and
//!   blending a colour with a neutral grey keeps its hue).
//! * Shapes ([`Shape`]): circle, square, triangle (equilateral, apex up), diamond (a square turned
//!   45°). All are axis-aligned.
//! * Sizes ([`Size`]): small (extent `R` in `0.085..0.100` of the image side) and big
//!   (`0.170..0.200`), i.e. big is about twice small in linear size. `R` is the circle's radius;
//!   the other shapes scale from it so their areas are comparable (see [`Shape::half_extents`]).
//! * Positions ([`Position`]): the image is cut in thirds each way. An object's centre (the
//!   centre of its bounding box) is *left* when `cx < 1/3` and `1/3 <= cy <= 2/3`, *right* when
//!   `cx > 2/3` and `cy` is in the middle band, *top* when `cy < 1/3` and `cx` is in the middle
//!   band, *bottom* when `cy > 2/3` and `cx` is in the middle band, *center* when both are in the
//!   middle band; the four corners have no name ([`Position::of`]). Coordinates are fractions of
//!   the image side, `y` grows downwards. The generator places a single object with its centre at
//!   least [`REGION_MARGIN`] inside its region, and every object at least [`BORDER_MARGIN`] inside
//!   the image (never clipped).
//! * Relations ([`Relation`]): "left of", "right of", "above", "below", between two objects. The
//!   generator lays them out with their bounding boxes separated by at least [`OBJECT_GAP`] along
//!   the relation's axis and an offset along the other axis at most 0.35 times the main one, so
//!   the relation is true and unambiguous; the two objects never share both colour and shape.
//!   [`Relation::holds`] is the (more lenient) rule the detector judges with.
//!
//! # Captions
//!
//! Exactly five templates ([`Template`]), words separated by single spaces:
//!
//! | template | caption |
//! |---|---|
//! | `Colour` | `a {colour} {shape}` |
//! | `SizeColour` | `a {size} {colour} {shape}` |
//! | `ColourPosition` | `a {colour} {shape} on the {position}` |
//! | `SizeColourPosition` | `a {size} {colour} {shape} on the {position}` |
//! | `Relation` | `a {colour} {shape} {relation} a {colour} {shape}` |
//!
//! A single-object scene always has a size and a position (one of the five regions) even when
//! its caption does not say them; the [`Object`] records the truth. [`Scene::words`] is the
//! caption split on spaces and [`Scene::word_object`] says, for each word, which object it
//! describes (colour, shape, size and position words) or `None` ("a", "on", "the", and the
//! relation words "left", "right", "of", "above", "below"). [`parse_caption`] turns a caption back
//! into the [`CaptionSpec`] it states.
//!
//! # Held-out split
//!
//! [`is_held_out`] reserves about 10% of the *captions* for evaluation: a caption is held out
//! when an FNV-1a hash of its canonical text (which is exactly its attribute tuple: template,
//! colours, shapes, size, position, relation), finished with a SplitMix64 mix, falls below 10% of
//! the range. With [`Split::Train`] (the default) [`sample`] never yields a held-out caption; with
//! [`Split::HeldOut`] it yields only those; [`eval_captions`] lists held-out captions of every
//! template kind.
//!
//! # Detector
//!
//! [`detect`] finds objects in any RGB image (e.g. a model's output) with the world's own rules,
//! and [`judge`] scores a caption against the detections. See [`detect`] for the method:
//! hue-based segmentation, connected components per colour, shape from blur-invariant moment
//! statistics, size from the bounding box against [`SIZE_THRESHOLD`], position from the
//! bounding-box centre with [`Position::of`], relations with [`Relation::holds`].

mod detect;
pub mod ood;
mod render;
pub mod rng;
mod scene;
#[cfg(test)]
mod tests;

pub use detect::{Detection, Judgement, ObjectJudgement, detect, judge, judge_spec};
pub use render::{render, sample};
pub use scene::{
    CaptionSpec, ObjectSpec, all_specs, caption_words, eval_captions, generate_scene, is_held_out, parse_caption, scene_from_spec,
};

use serde::{Deserialize, Serialize};

/// Range of the extent `R` of a small object, as a fraction of the image side.
pub const SMALL_RADIUS: (f32, f32) = (0.085, 0.100);
/// Range of the extent `R` of a big object, as a fraction of the image side.
pub const BIG_RADIUS: (f32, f32) = (0.170, 0.200);
/// The detector calls an object big when its estimated `R` is above this (geometric mean of
/// the largest small and the smallest big extent).
pub const SIZE_THRESHOLD: f32 = 0.130_384;
/// Minimum distance between an object's bounding box and the image border (fraction of side).
pub const BORDER_MARGIN: f32 = 0.025;
/// Minimum distance between a single object's centre and the edges of its named region.
pub const REGION_MARGIN: f32 = 0.025;
/// Minimum gap between the two objects' bounding boxes along the relation's axis.
pub const OBJECT_GAP: f32 = 0.06;
/// Fraction of all captions reserved for evaluation by [`is_held_out`], in thousandths.
pub const HELD_OUT_PER_MILLE: u64 = 100;

/// Errors of this module.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WorldError {
    /// The caption does not follow one of the five templates.
    #[error("caption {caption:?} does not follow a template: {reason}")]
    BadCaption { caption: String, reason: String },
    /// The scene cannot be laid out (e.g. a relation between objects that do not fit).
    #[error("cannot lay out scene: {0}")]
    Layout(String),
    /// The image buffer does not match its stated dimensions.
    #[error("image buffer has {got} bytes, expected {expected}")]
    BadImage { got: usize, expected: usize },
}

macro_rules! word_enum {
    ($(#[$m:meta])* $name:ident { $($var:ident => $word:literal),* $(,)? }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "lowercase")]
        pub enum $name { $($var),* }
        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$var),*];
            /// The caption word.
            pub fn name(self) -> &'static str { match self { $($name::$var => $word),* } }
            /// Parses the caption word (exact, lowercase).
            pub fn from_name(word: &str) -> Option<Self> {
                match word { $($word => Some($name::$var),)* _ => None }
            }
        }
        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str(self.name()) }
        }
    };
}

word_enum!(
    /// Object colour.
    Colour { Red => "red", Orange => "orange", Yellow => "yellow", Green => "green", Blue => "blue", Purple => "purple" }
);
word_enum!(
    /// Object shape (all axis-aligned; the triangle points up).
    Shape { Circle => "circle", Square => "square", Triangle => "triangle", Diamond => "diamond" }
);
word_enum!(
    /// Object size.
    Size { Small => "small", Big => "big" }
);
word_enum!(
    /// Named image region of a single object's centre (see [`Position::of`]).
    Position { Left => "left", Right => "right", Top => "top", Bottom => "bottom", Center => "center" }
);

impl Colour {
    /// The exact sRGB the renderer paints.
    pub fn rgb(self) -> [u8; 3] {
        match self {
            Colour::Red => [215, 35, 45],
            Colour::Orange => [245, 130, 20],
            Colour::Yellow => [240, 210, 30],
            Colour::Green => [45, 165, 65],
            Colour::Blue => [40, 90, 215],
            Colour::Purple => [145, 55, 195],
        }
    }
}

impl Shape {
    /// Half-width and half-height of the shape's bounding box for extent `r`.
    /// Circle: radius `r`. Square: half-side `0.88 r`. Triangle: half-base `1.1 r`, height
    /// `sqrt(3) * 1.1 r`. Diamond: half-diagonal `1.15 r`.
    pub fn half_extents(self, r: f32) -> (f32, f32) {
        match self {
            Shape::Circle => (r, r),
            Shape::Square => (0.88 * r, 0.88 * r),
            Shape::Triangle => (1.1 * r, 0.5 * 3f32.sqrt() * 1.1 * r),
            Shape::Diamond => (1.15 * r, 1.15 * r),
        }
    }

    /// Whether the point `(u, v)` — relative to the bounding-box centre and divided by the
    /// half-width and half-height, so the box is `[-1, 1]^2` — lies inside the shape.
    pub fn contains_unit(self, u: f32, v: f32) -> bool {
        match self {
            Shape::Circle => u * u + v * v <= 1.0,
            Shape::Square => u.abs() <= 1.0 && v.abs() <= 1.0,
            // apex at (0, -1), base from (-1, 1) to (1, 1)
            Shape::Triangle => (-1.0..=1.0).contains(&v) && u.abs() <= (v + 1.0) * 0.5,
            Shape::Diamond => u.abs() + v.abs() <= 1.0,
        }
    }
}

/// The relation between the first and the second object of a two-object caption.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    LeftOf,
    RightOf,
    Above,
    Below,
}

impl Relation {
    /// Every value.
    pub const ALL: &'static [Relation] = &[Relation::LeftOf, Relation::RightOf, Relation::Above, Relation::Below];

    /// The caption phrase ("left of", "right of", "above", "below").
    pub fn name(self) -> &'static str {
        match self {
            Relation::LeftOf => "left of",
            Relation::RightOf => "right of",
            Relation::Above => "above",
            Relation::Below => "below",
        }
    }

    /// Whether object A at `a` stands in this relation to object B at `b` (centres, fractions of
    /// the image side, `y` down): the displacement along the relation's axis must be at least
    /// 0.08 in the right direction and larger than the displacement along the other axis.
    pub fn holds(self, a: (f32, f32), b: (f32, f32)) -> bool {
        let dx = b.0 - a.0; // > 0: B is right of A
        let dy = b.1 - a.1; // > 0: B is below A
        let (main, other) = match self {
            Relation::LeftOf => (dx, dy),
            Relation::RightOf => (-dx, dy),
            Relation::Above => (dy, dx),
            Relation::Below => (-dy, dx),
        };
        main >= 0.08 && other.abs() < main
    }

    /// (direction along x, direction along y) of B relative to A.
    pub(crate) fn axis(self) -> (f32, f32) {
        match self {
            Relation::LeftOf => (1.0, 0.0),
            Relation::RightOf => (-1.0, 0.0),
            Relation::Above => (0.0, 1.0),
            Relation::Below => (0.0, -1.0),
        }
    }
}

impl std::fmt::Display for Relation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Position {
    /// The named region containing the point `(cx, cy)` (fractions of the image side, `y` down),
    /// or `None` in a corner. Thirds: `[0, 1/3)`, `[1/3, 2/3]`, `(2/3, 1]`.
    pub fn of(cx: f32, cy: f32) -> Option<Position> {
        let third = |t: f32| {
            if t < 1.0 / 3.0 {
                0
            } else if t > 2.0 / 3.0 {
                2
            } else {
                1
            }
        };
        match (third(cx), third(cy)) {
            (0, 1) => Some(Position::Left),
            (2, 1) => Some(Position::Right),
            (1, 0) => Some(Position::Top),
            (1, 2) => Some(Position::Bottom),
            (1, 1) => Some(Position::Center),
            _ => None,
        }
    }

    /// The region's rectangle `(x0, x1, y0, y1)` in fractions of the image side.
    pub fn region(self) -> (f32, f32, f32, f32) {
        let (a, b) = (1.0 / 3.0, 2.0 / 3.0);
        match self {
            Position::Left => (0.0, a, a, b),
            Position::Right => (b, 1.0, a, b),
            Position::Top => (a, b, 0.0, a),
            Position::Bottom => (a, b, b, 1.0),
            Position::Center => (a, b, a, b),
        }
    }
}

/// The caption template of a scene.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    /// `a {colour} {shape}`
    Colour,
    /// `a {size} {colour} {shape}`
    SizeColour,
    /// `a {colour} {shape} on the {position}`
    ColourPosition,
    /// `a {size} {colour} {shape} on the {position}`
    SizeColourPosition,
    /// `a {colour} {shape} {relation} a {colour} {shape}`
    Relation,
}

impl Template {
    /// Every template.
    pub const ALL: &'static [Template] = &[
        Template::Colour,
        Template::SizeColour,
        Template::ColourPosition,
        Template::SizeColourPosition,
        Template::Relation,
    ];
    /// Whether the caption states the object's size.
    pub fn states_size(self) -> bool {
        matches!(self, Template::SizeColour | Template::SizeColourPosition)
    }
    /// Whether the caption states the object's position.
    pub fn states_position(self) -> bool {
        matches!(self, Template::ColourPosition | Template::SizeColourPosition)
    }
    /// Number of objects in scenes of this template.
    pub fn object_count(self) -> usize {
        if self == Template::Relation { 2 } else { 1 }
    }
}

/// One object of a scene. Coordinates are fractions of the image side (`y` down).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Object {
    pub colour: Colour,
    pub shape: Shape,
    pub size: Size,
    /// Centre of the bounding box, x.
    pub cx: f32,
    /// Centre of the bounding box, y.
    pub cy: f32,
    /// Extent `R` (the circle's radius; see [`Shape::half_extents`]).
    pub radius: f32,
}

impl Object {
    /// Half-width and half-height of the bounding box (fractions of the image side).
    pub fn half_extents(&self) -> (f32, f32) {
        self.shape.half_extents(self.radius)
    }
    /// Bounding box `(x0, x1, y0, y1)` in fractions of the image side.
    pub fn bbox(&self) -> (f32, f32, f32, f32) {
        let (hx, hy) = self.half_extents();
        (self.cx - hx, self.cx + hx, self.cy - hy, self.cy + hy)
    }
    /// The named region of the object's centre.
    pub fn position(&self) -> Option<Position> {
        Position::of(self.cx, self.cy)
    }
    /// Whether the point `(x, y)` (fractions of the image side) is inside the object.
    pub fn contains(&self, x: f32, y: f32) -> bool {
        let (hx, hy) = self.half_extents();
        self.shape.contains_unit((x - self.cx) / hx, (y - self.cy) / hy)
    }
    /// Extent `R` in pixels for an image of side `size`.
    pub fn radius_px(&self, size: usize) -> f32 {
        self.radius * size as f32
    }
}

/// The background: a light neutral colour, optionally with a gradient and smooth noise.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Background {
    /// Base colour (light, low saturation).
    pub base: [u8; 3],
    /// Unit direction of the linear gradient (no trigonometry, so renders are bit-exact
    /// everywhere).
    pub gradient_dir: [f32; 2],
    /// Gradient amplitude (total change across the image, 0..255 units, applied to all channels).
    pub gradient_amp: f32,
    /// Amplitude of the smooth value noise (0..255 units).
    pub noise_amp: f32,
    /// Amplitude of the per-pixel grain (0..255 units).
    pub grain_amp: f32,
    /// Seed of the noise and grain.
    pub seed: u64,
}

impl Background {
    /// A flat light grey.
    pub const PLAIN: Background = Background {
        base: [232, 232, 232],
        gradient_dir: [1.0, 0.0],
        gradient_amp: 0.0,
        noise_amp: 0.0,
        grain_amp: 0.0,
        seed: 0,
    };
}

/// A scene: objects, the caption that describes them and the word-to-object map.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Scene {
    pub objects: Vec<Object>,
    pub template: Template,
    pub relation: Option<Relation>,
    pub caption: String,
    /// `caption` split on spaces.
    pub words: Vec<String>,
    /// For each word, the index of the object it describes (colour, shape, size, position
    /// words), `None` for "a", "on", "the" and relation words.
    pub word_object: Vec<Option<usize>>,
    pub background: Background,
}

impl Scene {
    /// The constraints the caption states (what [`parse_caption`] returns for `caption`).
    pub fn spec(&self) -> CaptionSpec {
        scene::spec_of(self)
    }
}

/// A rendered scene.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub scene: Scene,
    pub width: usize,
    pub height: usize,
    /// Row-major RGB, `width * height * 3` bytes.
    pub rgb: Vec<u8>,
    /// Per object, row-major antialiased coverage `0..=255` at image resolution (255: the pixel
    /// lies entirely inside the object). See [`Sample::mask_bool`] for a binary mask.
    pub masks: Vec<Vec<u8>>,
}

impl Sample {
    /// Binary mask of object `i`: pixels at least half covered.
    pub fn mask_bool(&self, i: usize) -> Vec<bool> {
        self.masks[i].iter().map(|&c| c >= 128).collect()
    }
    /// The mask of the object a caption word describes (`None` for "a", relation words...).
    pub fn word_mask(&self, word_index: usize) -> Option<&[u8]> {
        let obj = (*self.scene.word_object.get(word_index)?)?;
        self.masks.get(obj).map(|m| m.as_slice())
    }
    /// The image as an `image::RgbImage`.
    pub fn to_image(&self) -> image::RgbImage {
        image::RgbImage::from_raw(self.width as u32, self.height as u32, self.rgb.clone()).expect("rgb buffer has width * height * 3 bytes")
    }
    /// Writes the image as a PNG.
    pub fn save_png(&self, path: impl AsRef<std::path::Path>) -> image::ImageResult<()> {
        self.to_image().save(path)
    }
}

/// Which captions [`sample`] may produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Split {
    /// Only captions that are not held out (the training set).
    #[default]
    Train,
    /// Only held-out captions (the evaluation set).
    HeldOut,
    /// Any caption.
    All,
}

/// Dataset parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorldConfig {
    /// Image side in pixels (default 128; 64 works too; at least 32).
    pub size: usize,
    /// Fraction of scenes with two objects (the `Relation` template); the rest are split evenly
    /// among the four single-object templates.
    pub two_object_fraction: f32,
    /// Whether backgrounds may carry a gradient and noise (else flat colour).
    pub texture: bool,
    /// Supersampling factor per axis for antialiasing (default 4, i.e. 16 samples per pixel).
    pub supersample: usize,
    /// Which captions [`sample`] yields.
    pub split: Split,
}

impl Default for WorldConfig {
    fn default() -> Self {
        WorldConfig {
            size: 128,
            two_object_fraction: 0.3,
            texture: true,
            supersample: 4,
            split: Split::Train,
        }
    }
}

impl WorldConfig {
    /// The default configuration at another image size.
    pub fn with_size(size: usize) -> Self {
        WorldConfig {
            size,
            ..Default::default()
        }
    }
}
