//! Scoring an attention map against a ground-truth mask: the pointing game (does the map's
//! peak fall inside the object?) and the IoU of the thresholded map (DAAM, arXiv 2210.04885,
//! normalises a word's heat map to [0, 1] and thresholds it at tau = 0.4).

use super::{TokenMap, resize_bilinear};

/// DAAM's threshold on the min-max normalised map.
pub const DEFAULT_THRESHOLD: f32 = 0.4;

/// One map scored against one mask.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PointScore {
    /// The map's maximum (after bilinear upsampling to the mask's size) lies inside the mask.
    pub hit: bool,
    /// Intersection over union of `{normalised map >= threshold}` and the mask.
    pub iou: f32,
}

/// Scores `map` (any grid size) against a row-major `mask` of `width * height` pixels. The map
/// is upsampled bilinearly to the mask's size first (as DAAM brings maps to image size); the
/// peak is the first maximum in row-major order. A constant map has no peak: it scores a miss
/// and an IoU of 0. Panics when `mask.len() != width * height`.
pub fn score(map: &TokenMap, mask: &[bool], width: usize, height: usize, threshold: f32) -> PointScore {
    assert_eq!(mask.len(), width * height, "mask must be width * height");
    let up = resize_bilinear(&map.values, map.height, map.width, height, width);
    let (mut lo, mut hi, mut arg) = (f32::INFINITY, f32::NEG_INFINITY, 0);
    for (i, &v) in up.iter().enumerate() {
        lo = lo.min(v);
        if v > hi {
            hi = v;
            arg = i;
        }
    }
    // A constant map (or one with NaNs) has no peak.
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        return PointScore { hit: false, iou: 0.0 };
    }
    let cut = lo + threshold * (hi - lo);
    let (mut inter, mut union) = (0usize, 0usize);
    for (&v, &m) in up.iter().zip(mask) {
        let on = v >= cut;
        inter += (on && m) as usize;
        union += (on || m) as usize;
    }
    PointScore {
        hit: mask[arg],
        iou: if union == 0 { 0.0 } else { inter as f32 / union as f32 },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(h: usize, w: usize, f: impl Fn(usize, usize) -> f32) -> TokenMap {
        TokenMap {
            height: h,
            width: w,
            values: (0..h * w).map(|i| f(i / w, i % w)).collect(),
        }
    }

    #[test]
    fn peak_inside_and_outside() {
        // 4x4 map peaking in its top-left cell; 16x16 mask.
        let m = map(4, 4, |y, x| if (y, x) == (0, 0) { 1.0 } else { 0.0 });
        let top_left: Vec<bool> = (0..256).map(|i| i / 16 < 4 && i % 16 < 4).collect();
        let bottom_right: Vec<bool> = (0..256).map(|i| i / 16 >= 8 && i % 16 >= 8).collect();
        assert!(score(&m, &top_left, 16, 16, DEFAULT_THRESHOLD).hit);
        assert!(!score(&m, &bottom_right, 16, 16, DEFAULT_THRESHOLD).hit);
        assert_eq!(score(&m, &bottom_right, 16, 16, DEFAULT_THRESHOLD).iou, 0.0);
    }

    #[test]
    fn iou_of_a_map_equal_to_its_mask_is_one() {
        // Same grid size: no resampling, a binary map thresholds to itself.
        let m = map(8, 8, |y, x| if (2..5).contains(&y) && (3..7).contains(&x) { 0.9 } else { 0.1 });
        let mask: Vec<bool> = m.values.iter().map(|&v| v > 0.5).collect();
        let s = score(&m, &mask, 8, 8, DEFAULT_THRESHOLD);
        assert!(s.hit);
        assert!((s.iou - 1.0).abs() < 1e-6);
        // Half the mask: IoU 1/2 exactly (6 of 12 pixels).
        let half: Vec<bool> = (0..64).map(|i| mask[i] && i % 8 < 5).collect();
        let s = score(&m, &half, 8, 8, DEFAULT_THRESHOLD);
        assert!((s.iou - 0.5).abs() < 1e-6, "{}", s.iou);
    }

    #[test]
    fn constant_map_scores_nothing() {
        let m = map(4, 4, |_, _| 0.25);
        let all = vec![true; 64];
        assert_eq!(score(&m, &all, 8, 8, DEFAULT_THRESHOLD), PointScore { hit: false, iou: 0.0 });
    }
}
