//! Colours and spacing in one place.

use eframe::egui;

pub const ACCENT: egui::Color32 = egui::Color32::from_rgb(90, 170, 255);
pub const MARKER: egui::Color32 = egui::Color32::from_rgb(255, 190, 60);
pub const ERROR: egui::Color32 = egui::Color32::from_rgb(240, 90, 80);
pub const CHIP_SELECTED: egui::Color32 = egui::Color32::from_rgb(40, 90, 150);

pub fn apply(ctx: &egui::Context) {
    ctx.set_visuals(egui::Visuals::dark());
}
