// Attention heatmap: one latent-resolution map (R32Float, nearest cell) through a 256-entry
// colormap lookup table (the same table the PNG exporter uses), drawn over the image rect with
// premultiplied alpha.

struct Params {
    vmin: f32,
    vmax: f32,
    opacity: f32,
    _pad: f32,
};

@group(0) @binding(0) var<uniform> params: Params;
@group(0) @binding(1) var lut: texture_2d<f32>;
@group(1) @binding(0) var map: texture_2d<f32>;

struct VsOut {
    @builtin(position) pos: vec4<f32>,
    @location(0) uv: vec2<f32>,
};

@vertex
fn vs_main(@builtin(vertex_index) i: u32) -> VsOut {
    // One triangle covering the viewport (the callback's rect).
    var corners = array<vec2<f32>, 3>(vec2<f32>(-1.0, -1.0), vec2<f32>(3.0, -1.0), vec2<f32>(-1.0, 3.0));
    let p = corners[i];
    var out: VsOut;
    out.pos = vec4<f32>(p, 0.0, 1.0);
    out.uv = vec2<f32>((p.x + 1.0) * 0.5, 1.0 - (p.y + 1.0) * 0.5);
    return out;
}

@fragment
fn fs_main(in: VsOut) -> @location(0) vec4<f32> {
    let dims = textureDimensions(map);
    let cell = min(vec2<u32>(in.uv * vec2<f32>(dims)), dims - vec2<u32>(1u, 1u));
    let v = textureLoad(map, cell, 0).r;
    let t = clamp((v - params.vmin) / max(params.vmax - params.vmin, 1e-12), 0.0, 1.0);
    let index = u32(round(t * 255.0));
    let c = textureLoad(lut, vec2<u32>(index, 0u), 0);
    return vec4<f32>(c.rgb * params.opacity, params.opacity);
}
