//! The attention heatmap on the GPU: an egui_wgpu paint callback that draws one latent map
//! through the shared colormap table (shaders/heatmap.wgsl). Pipelines, layouts and the
//! colormap tables are created once at start-up and kept in egui_wgpu's `callback_resources`;
//! map textures are cached by key (run, step range, source, token positions), so scrubbing
//! back to a step already seen uploads nothing.

use std::collections::HashMap;
use std::sync::Arc;

use eframe::egui_wgpu::{self, CallbackResources, CallbackTrait, ScreenDescriptor, wgpu};

use crate::analysis::colormap::Colormap;

pub use super::MapKey;

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    vmin: f32,
    vmax: f32,
    opacity: f32,
    _pad: f32,
}

/// How many heatmaps may be drawn in one frame (side-by-side comparison of tokens).
pub const MAX_SLOTS: usize = 8;

struct Slot {
    uniforms: wgpu::Buffer,
    bind_groups: Vec<wgpu::BindGroup>, // one per colormap
}

pub struct HeatmapResources {
    pipeline: wgpu::RenderPipeline,
    map_layout: wgpu::BindGroupLayout,
    slots: Vec<Slot>,
    maps: HashMap<MapKey, wgpu::BindGroup>,
    /// Keys in upload order, to bound the cache.
    order: Vec<MapKey>,
}

const MAX_CACHED_MAPS: usize = 512;

impl HeatmapResources {
    /// Creates the pipeline and the colormap tables and stores them in the renderer's callback
    /// resources. Called once when the app starts.
    pub fn install(render_state: &egui_wgpu::RenderState) {
        let device = &render_state.device;
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("heatmap"),
            source: wgpu::ShaderSource::Wgsl(include_str!("../../shaders/heatmap.wgsl").into()),
        });
        let params_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("heatmap params"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: false,
                        min_binding_size: None,
                    },
                    count: None,
                },
                texture_entry(1),
            ],
        });
        let map_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("heatmap map"),
            entries: &[texture_entry(0)],
        });
        let layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("heatmap"),
            bind_group_layouts: &[Some(&params_layout), Some(&map_layout)],
            immediate_size: 0,
        });
        let pipeline = device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
            label: Some("heatmap"),
            layout: Some(&layout),
            vertex: wgpu::VertexState {
                module: &shader,
                entry_point: Some("vs_main"),
                buffers: &[],
                compilation_options: Default::default(),
            },
            fragment: Some(wgpu::FragmentState {
                module: &shader,
                entry_point: Some("fs_main"),
                targets: &[Some(wgpu::ColorTargetState {
                    format: render_state.target_format,
                    blend: Some(wgpu::BlendState::PREMULTIPLIED_ALPHA_BLENDING),
                    write_mask: wgpu::ColorWrites::ALL,
                })],
                compilation_options: Default::default(),
            }),
            primitive: wgpu::PrimitiveState::default(),
            depth_stencil: None,
            multisample: wgpu::MultisampleState::default(),
            multiview_mask: None,
            cache: None,
        });
        // The colormap tables: exactly `Colormap::lut()`, as the exporter uses them.
        let luts: Vec<wgpu::TextureView> = Colormap::ALL
            .iter()
            .map(|cm| {
                let lut = cm.lut();
                let tex = device.create_texture(&wgpu::TextureDescriptor {
                    label: Some("colormap"),
                    size: wgpu::Extent3d {
                        width: 256,
                        height: 1,
                        depth_or_array_layers: 1,
                    },
                    mip_level_count: 1,
                    sample_count: 1,
                    dimension: wgpu::TextureDimension::D2,
                    format: wgpu::TextureFormat::Rgba8Unorm,
                    usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
                    view_formats: &[],
                });
                render_state.queue.write_texture(
                    tex.as_image_copy(),
                    bytemuck::cast_slice(&lut),
                    wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(256 * 4),
                        rows_per_image: Some(1),
                    },
                    wgpu::Extent3d {
                        width: 256,
                        height: 1,
                        depth_or_array_layers: 1,
                    },
                );
                tex.create_view(&Default::default())
            })
            .collect();
        let slots = (0..MAX_SLOTS)
            .map(|_| {
                let uniforms = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("heatmap params"),
                    size: std::mem::size_of::<Params>() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let bind_groups = luts
                    .iter()
                    .map(|lut| {
                        device.create_bind_group(&wgpu::BindGroupDescriptor {
                            label: Some("heatmap params"),
                            layout: &params_layout,
                            entries: &[
                                wgpu::BindGroupEntry {
                                    binding: 0,
                                    resource: uniforms.as_entire_binding(),
                                },
                                wgpu::BindGroupEntry {
                                    binding: 1,
                                    resource: wgpu::BindingResource::TextureView(lut),
                                },
                            ],
                        })
                    })
                    .collect();
                Slot { uniforms, bind_groups }
            })
            .collect();
        let resources = HeatmapResources {
            pipeline,
            map_layout,
            slots,
            maps: HashMap::new(),
            order: Vec::new(),
        };
        render_state.renderer.write().callback_resources.insert(resources);
    }

    fn upload(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, key: &MapKey, map: &MapData) {
        let size = wgpu::Extent3d {
            width: map.width as u32,
            height: map.height as u32,
            depth_or_array_layers: 1,
        };
        let tex = device.create_texture(&wgpu::TextureDescriptor {
            label: Some("attention map"),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::R32Float,
            usage: wgpu::TextureUsages::TEXTURE_BINDING | wgpu::TextureUsages::COPY_DST,
            view_formats: &[],
        });
        queue.write_texture(
            tex.as_image_copy(),
            bytemuck::cast_slice(&map.values),
            wgpu::TexelCopyBufferLayout {
                offset: 0,
                bytes_per_row: Some(map.width as u32 * 4),
                rows_per_image: Some(map.height as u32),
            },
            size,
        );
        let view = tex.create_view(&Default::default());
        let bind_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("attention map"),
            layout: &self.map_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::TextureView(&view),
            }],
        });
        if self.order.len() >= MAX_CACHED_MAPS {
            let old = self.order.remove(0);
            self.maps.remove(&old);
        }
        self.order.push(key.clone());
        self.maps.insert(key.clone(), bind_group);
    }
}

/// A fragment-stage, non-filterable 2D float texture (colormap table, attention map): both
/// are read with `textureLoad` at exact texels.
fn texture_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::FRAGMENT,
        ty: wgpu::BindingType::Texture {
            sample_type: wgpu::TextureSampleType::Float { filterable: false },
            view_dimension: wgpu::TextureViewDimension::D2,
            multisampled: false,
        },
        count: None,
    }
}

/// A map's values on the latent grid, [height * width] row-major.
pub struct MapData {
    pub width: usize,
    pub height: usize,
    pub values: Vec<f32>,
}

/// One heatmap to draw this frame.
pub struct HeatmapCallback {
    pub slot: usize,
    pub key: MapKey,
    /// The values, shared with the UI's CPU-side cache; uploaded once per key.
    pub data: Arc<MapData>,
    pub vmin: f32,
    pub vmax: f32,
    pub opacity: f32,
    pub colormap: Colormap,
}

impl CallbackTrait for HeatmapCallback {
    fn prepare(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        _screen: &ScreenDescriptor,
        _encoder: &mut wgpu::CommandEncoder,
        resources: &mut CallbackResources,
    ) -> Vec<wgpu::CommandBuffer> {
        let Some(res) = resources.get_mut::<HeatmapResources>() else {
            return Vec::new();
        };
        if !res.maps.contains_key(&self.key) && self.data.width > 0 && self.data.height > 0 {
            res.upload(device, queue, &self.key, &self.data);
        }
        if let Some(slot) = res.slots.get(self.slot) {
            let p = Params {
                vmin: self.vmin,
                vmax: self.vmax,
                opacity: self.opacity,
                _pad: 0.0,
            };
            queue.write_buffer(&slot.uniforms, 0, bytemuck::bytes_of(&p));
        }
        Vec::new()
    }

    fn paint(&self, _info: egui::PaintCallbackInfo, pass: &mut wgpu::RenderPass<'static>, resources: &CallbackResources) {
        let Some(res) = resources.get::<HeatmapResources>() else { return };
        let (Some(slot), Some(map)) = (res.slots.get(self.slot), res.maps.get(&self.key)) else {
            return;
        };
        let cm = Colormap::ALL.iter().position(|c| *c == self.colormap).unwrap_or(0);
        pass.set_pipeline(&res.pipeline);
        pass.set_bind_group(0, &slot.bind_groups[cm], &[]);
        pass.set_bind_group(1, map, &[]);
        pass.draw(0..3, 0..1);
    }
}

use eframe::egui;
