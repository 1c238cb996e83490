//! A small physics simulation of the sPHENIX TPC's outer layer group, producing wedges with the
//! structure of real ones (see `../shared/data-spec.md`).
//!
//! Per event: one Au+Au collision (multiplicity varying event to event) plus a Poisson number of
//! minimum-bias pile-up collisions shifted in drift time, and secondaries (conversion electrons and
//! other low-momentum particles produced in the inner material). Every charged particle follows a
//! helix in the 1.4 T solenoid field; low-momentum ones loop. Each crossing of one of the 16 pad rows
//! deposits a Landau-like (Moyal) charge proportional to its path length in the row and to a
//! Bethe-Bloch-like dE/dx; the charge is spread along the track segment, smeared by transverse and
//! longitudinal diffusion and the readout's spread, integrated over pads (error function), shaped in
//! time by the SAMPA-like CR-RC^4 response, given ~670 e of electronics noise, converted to ADC,
//! saturated at 1023 and zero-suppressed below 64.
//!
//! Everything is deterministic from `(seed, event)` (ChaCha8); the 24 wedges of an event render in
//! parallel (rayon).

use std::f64::consts::PI;
use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Exp, Gamma, Normal, Poisson};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{
    disk_index, write_wedge, DataError, Wedge, ADC_MAX, AZIMUTH, LAYERS, WEDGES_PER_EVENT,
    ZERO_SUPPRESSION, Z_BINS,
};

/// Sectors per side.
pub const SECTORS: usize = 12;
/// Pads per full row (12 sectors x 192).
pub const PADS_PER_ROW: usize = SECTORS * AZIMUTH;

/// Detector geometry and physics parameters of the simulation. The defaults are the sPHENIX
/// outer layer group and central Au+Au at 200 GeV with 170 kHz pile-up, tuned so that the
/// statistics of `../shared/data-spec.md` hold.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SynthConfig {
    /// Radius of the innermost pad row of the outer group, cm.
    pub r_first: f64,
    /// Radius of the outermost pad row, cm.
    pub r_last: f64,
    /// Outer field cage radius: particles are absorbed beyond it, cm.
    pub r_outer_cage: f64,
    /// Drift length per side, cm.
    pub drift_length: f64,
    /// Drift velocity, cm/us.
    pub drift_velocity: f64,
    /// ADC sampling period, ns.
    pub clock_ns: f64,
    /// Solenoid field, T.
    pub field_t: f64,
    /// Charged-particle dN/deta of a central collision.
    pub dndeta_central: f64,
    /// Relative sd of the main collision's multiplicity (centrality spread within the sample).
    pub multiplicity_spread: f64,
    /// Tracks are generated over |eta| < eta_max (beyond the 1.1 of the quoted dN/deta: the
    /// acceptance of the outer rows reaches |eta| 1.35 near the membrane).
    pub eta_max: f64,
    /// Mean transverse momentum, GeV/c.
    pub pt_mean: f64,
    /// Mean number of pile-up collisions per drift window.
    pub pileup_mean: f64,
    /// Pile-up collisions happen within +- this fraction of a drift time of the triggered one;
    /// their charge is shifted along z by the time offset, and what is shifted out of the drift
    /// window is lost, so pile-up thins out towards both ends of z.
    pub pileup_time_window: f64,
    /// Multiplicity of a pile-up (minimum-bias) collision relative to a central one.
    pub pileup_multiplicity: f64,
    /// Secondaries (low-momentum electrons etc.) per primary.
    pub secondaries_per_primary: f64,
    /// Mean transverse momentum of secondaries, GeV/c.
    pub secondary_pt_mean: f64,
    /// Maximum turns a looping particle makes before it ranges out.
    pub max_turns: f64,
    /// Collision vertex z spread (sd), cm.
    pub vertex_z_sd: f64,
    /// Most probable charge of a minimum-ionising particle crossing one pad row at normal incidence,
    /// in ADC counts summed over the cluster's pads at the shaper's peak.
    pub mip_charge_adc: f64,
    /// Landau (Moyal) width relative to the most probable value.
    pub landau_width: f64,
    /// Transverse diffusion, cm/sqrt(cm).
    pub diffusion_t: f64,
    /// Longitudinal diffusion, cm/sqrt(cm).
    pub diffusion_l: f64,
    /// Readout (GEM + pad response) smear, cm.
    pub readout_smear: f64,
    /// Shaper peaking time, ns.
    pub peaking_ns: f64,
    /// Electronics noise, electrons (ENC).
    pub noise_electrons: f64,
    /// Electrons per ADC count.
    pub electrons_per_adc: f64,
    /// ADC pedestal (50,000 electrons in the sPHENIX digitiser).
    pub pedestal_adc: f64,
    /// A sample at or above this ADC value opens a readout window.
    pub trigger_adc: f64,
    /// Samples per readout window.
    pub window: usize,
    /// Fraction of drifting electrons lost per cm of drift (attachment).
    pub attachment_per_cm: f64,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            r_first: 58.37,
            r_last: 75.91,
            r_outer_cage: 78.0,
            drift_length: 105.5,
            drift_velocity: 8.0,
            clock_ns: 53.3,
            field_t: 1.4,
            dndeta_central: 1000.0,
            multiplicity_spread: 0.2,
            eta_max: 1.2,
            pt_mean: 0.5,
            pileup_mean: 3.0,
            pileup_multiplicity: 0.35,
            pileup_time_window: 0.3,
            secondaries_per_primary: 0.2,
            secondary_pt_mean: 0.15,
            max_turns: 1.0,
            vertex_z_sd: 10.0,
            mip_charge_adc: 120.0,
            landau_width: 0.35,
            diffusion_t: 0.004,
            diffusion_l: 0.012,
            readout_smear: 0.1,
            peaking_ns: 70.0,
            noise_electrons: 670.0,
            electrons_per_adc: 670.0,
            pedestal_adc: 74.5,
            trigger_adc: 78.0,
            window: 5,
            attachment_per_cm: 0.003,
        }
    }
}

impl SynthConfig {
    fn row_radius(&self, layer: usize) -> f64 {
        self.r_first + (self.r_last - self.r_first) * layer as f64 / (LAYERS - 1) as f64
    }
    fn row_pitch(&self) -> f64 {
        (self.r_last - self.r_first) / (LAYERS - 1) as f64
    }
    /// Length of one time bin in z, cm.
    fn bin_cm(&self) -> f64 {
        self.drift_velocity * self.clock_ns * 1e-3
    }
    /// Helix radius in cm of a particle with transverse momentum `pt` GeV/c.
    fn helix_radius(&self, pt: f64) -> f64 {
        100.0 * pt / (0.3 * self.field_t)
    }
}

/// One charged particle: a helix.
#[derive(Clone, Debug)]
struct Particle {
    /// Start point in the transverse plane, cm.
    x0: f64,
    y0: f64,
    /// Start z, cm.
    z0: f64,
    /// Drift-time offset of its collision relative to the triggered one, as a shift of the
    /// measured distance from the membrane, cm (charge shifted out of 0..drift_length is lost).
    shift: f64,
    /// Transverse momentum GeV/c, azimuth of the momentum at the start, cot(theta).
    pt: f64,
    phi: f64,
    cot_theta: f64,
    /// +1 or -1 (sense of rotation in the field).
    charge: f64,
    mass: f64,
}

/// One crossing of a pad row, seen by one wedge.
#[derive(Clone, Debug)]
struct Hit {
    wedge: usize,
    layer: usize,
    /// Global azimuth of the crossing point, rad, in [0, 2pi).
    phi: f64,
    /// Measured distance from the central membrane (true |z| plus the drift-time shift), cm.
    z: f64,
    /// True drift distance to the readout plane, cm.
    drift: f64,
    /// Unit direction in the transverse plane at the crossing.
    dir_x: f64,
    dir_y: f64,
    cot_theta: f64,
    /// Charge in ADC counts (before shaping), summed over the whole crossing.
    charge: f64,
}

/// Independent random stream for (seed, event).
fn event_rng(seed: u64, event: u64) -> ChaCha8Rng {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(event);
    rng
}

/// Generate the particles of one event.
fn generate_particles(cfg: &SynthConfig, rng: &mut ChaCha8Rng) -> Vec<Particle> {
    let mut particles = Vec::new();
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    // Main collision: multiplicity varies event to event (centrality within the sample).
    let main_scale = (1.0 + cfg.multiplicity_spread * unit.sample(rng)).max(0.2);
    let mut collisions = vec![(main_scale, 0.0)];
    let n_pileup = sample_poisson(rng, cfg.pileup_mean);
    for _ in 0..n_pileup {
        // A pile-up collision anywhere within +- one drift time shifts its charge along z.
        let reach = cfg.pileup_time_window * cfg.drift_length;
        let shift = rng.gen_range(-reach..reach);
        // Minimum-bias multiplicities: broad (gamma, shape 2) around the mean.
        let scale =
            cfg.pileup_multiplicity * Gamma::new(2.0, 0.5).expect("valid gamma").sample(rng);
        collisions.push((scale, shift));
    }
    let pt_dist = Gamma::new(2.0, cfg.pt_mean / 2.0).expect("valid gamma");
    let sec_pt = Exp::new(1.0 / cfg.secondary_pt_mean).expect("valid exp");
    for (scale, shift) in collisions {
        let vz = cfg.vertex_z_sd * unit.sample(rng);
        let mean_n = scale * cfg.dndeta_central * 2.0 * cfg.eta_max;
        let n = sample_poisson(rng, mean_n);
        for _ in 0..n {
            let eta: f64 = rng.gen_range(-cfg.eta_max..cfg.eta_max);
            let pt = pt_dist.sample(rng).max(0.03);
            let r: f64 = rng.gen();
            let mass = if r < 0.8 {
                0.1396
            } else if r < 0.9 {
                0.4937
            } else {
                0.9383
            };
            particles.push(Particle {
                x0: 0.0,
                y0: 0.0,
                z0: vz,
                shift,
                pt,
                phi: rng.gen_range(0.0..2.0 * PI),
                cot_theta: eta.sinh(),
                charge: if rng.gen::<bool>() { 1.0 } else { -1.0 },
                mass,
            });
        }
        // Secondaries: produced in the inner material (beam pipe, silicon, inner field cage).
        let n_sec = sample_poisson(rng, mean_n * cfg.secondaries_per_primary);
        for _ in 0..n_sec {
            let r0 = rng.gen_range(2.0..30.0);
            let a0 = rng.gen_range(0.0..2.0 * PI);
            let eta: f64 = rng.gen_range(-cfg.eta_max..cfg.eta_max);
            particles.push(Particle {
                x0: r0 * a0.cos(),
                y0: r0 * a0.sin(),
                z0: vz + r0 * rng.gen_range(-1.0..1.0),
                shift,
                pt: sec_pt.sample(rng).max(0.01),
                phi: rng.gen_range(0.0..2.0 * PI),
                cot_theta: eta.sinh(),
                charge: if rng.gen::<bool>() { 1.0 } else { -1.0 },
                mass: 0.000511,
            });
        }
    }
    particles
}

fn sample_poisson(rng: &mut ChaCha8Rng, mean: f64) -> usize {
    if mean <= 0.0 {
        return 0;
    }
    Poisson::new(mean)
        .map(|p| p.sample(rng) as usize)
        .unwrap_or(0)
}

/// Moyal variate (Landau-like: small most probable value, long tail), mode 0.
fn moyal(rng: &mut ChaCha8Rng) -> f64 {
    let g: f64 = Normal::new(0.0, 1.0).expect("valid normal").sample(rng);
    -(g * g).max(1e-12).ln()
}

/// Relative dE/dx (1 for a minimum-ionising particle), a simplified Bethe-Bloch curve.
fn relative_dedx(p: f64, mass: f64) -> f64 {
    let bg = p / mass;
    let beta2 = bg * bg / (1.0 + bg * bg);
    let value = (1.0 / beta2) * (1.0 + 0.08 * (bg.max(0.1)).ln());
    let mip = (1.0 + 1.0 / 12.25) * (1.0 + 0.08 * 3.5f64.ln());
    (value / mip).clamp(0.8, 12.0)
}

/// All pad-row crossings of one particle.
fn particle_hits(cfg: &SynthConfig, p: &Particle, rng: &mut ChaCha8Rng, hits: &mut Vec<Hit>) {
    let radius = cfg.helix_radius(p.pt);
    // Centre of the helix: to the left (charge < 0) or right of the momentum.
    let h = -p.charge; // sense of rotation
    let (ux, uy) = (p.phi.cos(), p.phi.sin());
    let xc = p.x0 - h * radius * uy;
    let yc = p.y0 + h * radius * ux;
    let c = (xc * xc + yc * yc).sqrt();
    let psi0 = (p.y0 - yc).atan2(p.x0 - xc);
    let beta = yc.atan2(xc);
    // Turning angle at which |P| = r, increasing from the start (None if never).
    let crossing_angles = |r: f64| -> [Option<f64>; 2] {
        if c < 1e-9 {
            return [None, None];
        }
        let u = (r * r - c * c - radius * radius) / (2.0 * radius * c);
        if u.abs() > 1.0 {
            return [None, None];
        }
        let a = u.acos();
        let to_delta = |psi: f64| (h * (psi - psi0)).rem_euclid(2.0 * PI);
        [Some(to_delta(beta + a)), Some(to_delta(beta - a))]
    };
    // The particle is absorbed when it first reaches the outer field cage, leaves the drift
    // volume in z, or ranges out after max_turns.
    let mut delta_max = 2.0 * PI * cfg.max_turns;
    for d in crossing_angles(cfg.r_outer_cage).into_iter().flatten() {
        delta_max = delta_max.min(d);
    }
    if p.cot_theta.abs() > 1e-9 {
        let s_max = ((cfg.drift_length + p.z0.abs()) / p.cot_theta.abs()).max(0.0);
        delta_max = delta_max.min(s_max / radius);
    }
    let momentum = p.pt * (1.0 + p.cot_theta * p.cot_theta).sqrt();
    let dedx = relative_dedx(momentum, p.mass);
    let pitch = cfg.row_pitch();
    for layer in 0..LAYERS {
        let r = cfg.row_radius(layer);
        for base in crossing_angles(r).into_iter().flatten() {
            let mut delta = base;
            while delta < delta_max {
                let psi = psi0 + h * delta;
                let (x, y) = (xc + radius * psi.cos(), yc + radius * psi.sin());
                let z_true = p.z0 + radius * delta * p.cot_theta;
                let side = if z_true >= 0.0 { 1 } else { 0 };
                let z = z_true.abs() + p.shift;
                let phi = y.atan2(x).rem_euclid(2.0 * PI);
                let sector = ((phi / (2.0 * PI) * SECTORS as f64) as usize).min(SECTORS - 1);
                let (dir_x, dir_y) = (-h * psi.sin(), h * psi.cos());
                let cos_a = ((dir_x * x + dir_y * y) / r).abs().max(0.12);
                let path = pitch / cos_a * (1.0 + p.cot_theta * p.cot_theta).sqrt();
                // Energy lost on earlier turns raises dE/dx of loopers a little.
                let turn_boost = 1.0 + 0.15 * (delta / (2.0 * PI)).floor();
                let q = cfg.mip_charge_adc
                    * dedx
                    * turn_boost
                    * (path / pitch)
                    * (1.0 + cfg.landau_width * moyal(rng));
                if z_true.abs() < cfg.drift_length
                    && (0.0..cfg.drift_length).contains(&z)
                    && q > 0.0
                {
                    hits.push(Hit {
                        wedge: side * SECTORS + sector,
                        layer,
                        phi,
                        z,
                        drift: cfg.drift_length - z_true.abs(),
                        dir_x,
                        dir_y,
                        cot_theta: p.cot_theta,
                        charge: q,
                    });
                }
                delta += 2.0 * PI;
            }
        }
    }
}

/// Standard normal CDF (Abramowitz-Stegun 7.1.26 for erf, |error| < 1.5e-7).
fn normal_cdf(x: f64) -> f64 {
    let z = x / std::f64::consts::SQRT_2;
    let t = 1.0 / (1.0 + 0.327_591_1 * z.abs());
    let poly = t
        * (0.254_829_592
            + t * (-0.284_496_736
                + t * (1.421_413_741 + t * (-1.453_152_027 + t * 1.061_405_429))));
    let erf = 1.0 - poly * (-z * z).exp();
    0.5 * (1.0 + if z >= 0.0 { erf } else { -erf })
}

/// CR-RC^4 shaper response at `t` clock periods after the charge arrives, peak 1 at `peak`.
fn shaper(t: f64, peak: f64) -> f64 {
    if t <= 0.0 {
        return 0.0;
    }
    let x = t / peak;
    (x.powi(4) * (-4.0 * (x - 1.0)).exp()).max(0.0)
}

/// Render the hits of one wedge into ADC values.
fn render_wedge(cfg: &SynthConfig, wedge: usize, hits: &[&Hit], rng: &mut ChaCha8Rng) -> Wedge {
    let sector = wedge % SECTORS;
    let pad_angle = 2.0 * PI / PADS_PER_ROW as f64;
    let phi_start = sector as f64 * 2.0 * PI / SECTORS as f64;
    let bin_cm = cfg.bin_cm();
    let peak_bins = cfg.peaking_ns / cfg.clock_ns;
    // Shaper response spans about 3.5 peaking times.
    let shape_len = (peak_bins * 3.5).ceil() as usize + 1;
    // Normalise so that a unit charge integrated over the pulse gives `charge` at the peak.
    let pitch = cfg.row_pitch();
    let mut signal = vec![0f32; AZIMUTH * Z_BINS * LAYERS];
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    for hit in hits {
        let r = cfg.row_radius(hit.layer);
        // Drift distance: the readout plane is at |z| = drift_length.
        let drift = hit.drift.clamp(0.0, cfg.drift_length);
        let sigma_t = (cfg.diffusion_t * cfg.diffusion_t * drift
            + cfg.readout_smear * cfg.readout_smear)
            .sqrt();
        let sigma_l_bins = cfg.diffusion_l * drift.sqrt() / bin_cm;
        let sigma_pad = sigma_t / (r * pad_angle);
        let charge = hit.charge * (-cfg.attachment_per_cm * drift).exp();
        // Spread the charge along the segment of track inside the pad row.
        let radial = (hit.dir_x * hit.phi.cos() + hit.dir_y * hit.phi.sin())
            .abs()
            .max(0.12);
        let seg_t = pitch / radial; // transverse path length in the row
        let seg_rphi = seg_t * (1.0 - radial * radial).sqrt();
        let sign_rphi = (hit.dir_y * hit.phi.cos() - hit.dir_x * hit.phi.sin()).signum();
        let seg_z = seg_t * hit.cot_theta;
        let steps = ((seg_rphi / (r * pad_angle))
            .abs()
            .max((seg_z / bin_cm).abs())
            .ceil() as usize)
            .clamp(1, 32);
        let q_step = charge / steps as f64;
        for k in 0..steps {
            let f = (k as f64 + 0.5) / steps as f64 - 0.5;
            let pad = (hit.phi + sign_rphi * f * seg_rphi / r - phi_start) / pad_angle;
            // Time bin: bin 0 at the central membrane, z measured away from it.
            let t = (hit.z + f * seg_z.abs()) / bin_cm + sigma_l_bins * unit.sample(rng);
            let p_lo = (pad - 3.5 * sigma_pad).floor().max(0.0) as i64;
            let p_hi = ((pad + 3.5 * sigma_pad).ceil() as i64).min(AZIMUTH as i64 - 1);
            if p_hi < 0 || p_lo > AZIMUTH as i64 - 1 {
                continue;
            }
            let t0 = t.floor() as i64;
            for a in p_lo..=p_hi {
                let frac = normal_cdf((a as f64 + 1.0 - pad) / sigma_pad)
                    - normal_cdf((a as f64 - pad) / sigma_pad);
                if frac < 1e-4 {
                    continue;
                }
                let q = q_step * frac;
                for j in t0..=(t0 + shape_len as i64) {
                    if j < 0 || j >= Z_BINS as i64 {
                        continue;
                    }
                    let s = shaper(j as f64 + 0.5 - t, peak_bins);
                    if s > 1e-4 {
                        signal[disk_index(a as usize, j as usize, hit.layer)] += (q * s) as f32;
                    }
                }
            }
        }
    }
    digitize(cfg, &signal, rng)
}

/// The digitiser: pedestal + signal + noise, sampled per time bin; a time bin whose ADC reaches
/// the trigger threshold opens a readout window of `window` samples (stored whatever their
/// value, so windows end on pedestal-level tails); then saturation at 1023 and zero suppression
/// below 64. Only pads that received charge are digitised (as in the sPHENIX digitiser), so pure
/// noise never opens a window.
fn digitize(cfg: &SynthConfig, signal: &[f32], rng: &mut ChaCha8Rng) -> Wedge {
    let unit = Normal::new(0.0, 1.0).expect("valid normal");
    let noise_adc = cfg.noise_electrons / cfg.electrons_per_adc;
    let mut w = Wedge::zeros();
    let sample = |s: f32, rng: &mut ChaCha8Rng| -> u16 {
        let v = (cfg.pedestal_adc + f64::from(s) + noise_adc * unit.sample(rng)).round();
        if v < f64::from(ZERO_SUPPRESSION) {
            0
        } else {
            v.min(f64::from(ADC_MAX)) as u16
        }
    };
    for a in 0..AZIMUTH {
        for l in 0..LAYERS {
            let mut z = 0;
            while z < Z_BINS {
                let s = signal[disk_index(a, z, l)];
                if s <= 0.05 {
                    z += 1;
                    continue;
                }
                let first = sample(s, rng);
                if f64::from(first) < cfg.trigger_adc {
                    z += 1;
                    continue;
                }
                w.adc[disk_index(a, z, l)] = first;
                let end = (z + cfg.window).min(Z_BINS);
                for zz in z + 1..end {
                    w.adc[disk_index(a, zz, l)] = sample(signal[disk_index(a, zz, l)], rng);
                }
                z = end;
            }
        }
    }
    w
}

/// Generate the 24 wedges of one event with an explicit configuration.
/// Wedge `k` is sector `k % 12` on side `k / 12`.
pub fn generate_event_with(
    cfg: &SynthConfig,
    seed: u64,
    event: u64,
    wedges: &[usize],
) -> Vec<Wedge> {
    let mut rng = event_rng(seed, event);
    let particles = generate_particles(cfg, &mut rng);
    let mut hits = Vec::new();
    for p in &particles {
        particle_hits(cfg, p, &mut rng, &mut hits);
    }
    let wedge_seed: u64 = rng.gen();
    wedges
        .par_iter()
        .map(|&k| {
            let mine: Vec<&Hit> = hits.iter().filter(|h| h.wedge == k).collect();
            let mut wrng = ChaCha8Rng::seed_from_u64(wedge_seed);
            wrng.set_stream(k as u64);
            render_wedge(cfg, k, &mine, &mut wrng)
        })
        .collect()
}

/// The 24 wedges of event `event` (default configuration).
pub fn generate_event(seed: u64, event: u64) -> Vec<Wedge> {
    let all: Vec<usize> = (0..WEDGES_PER_EVENT).collect();
    generate_event_with(&SynthConfig::default(), seed, event, &all)
}

/// The first `n` wedges of events 0, 1, ... (default configuration).
pub fn generate_wedges(seed: u64, n: usize) -> Vec<Wedge> {
    generate_wedges_with(&SynthConfig::default(), seed, n)
}

/// The first `n` wedges of events 0, 1, ... with an explicit configuration.
pub fn generate_wedges_with(cfg: &SynthConfig, seed: u64, n: usize) -> Vec<Wedge> {
    let mut out = Vec::with_capacity(n);
    let mut event = 0u64;
    while out.len() < n {
        let take = (n - out.len()).min(WEDGES_PER_EVENT);
        let which: Vec<usize> = (0..take).collect();
        out.extend(generate_event_with(cfg, seed, event, &which));
        event += 1;
    }
    out
}

/// Relative path of wedge `k` of `event` in the reference layout.
pub fn wedge_relative_path(seed: u64, event: u64, k: usize) -> PathBuf {
    let sector = k % SECTORS;
    let side = k / SECTORS;
    PathBuf::from("outer")
        .join(format!("12-2_{sector}-{side}"))
        .join(format!(
            "Synth_seed{seed}.xml_TPCMLDataInterface_{event}.npy"
        ))
}

/// What [`write_dataset`] wrote.
#[derive(Clone, Debug, Serialize)]
pub struct DatasetSummary {
    pub root: PathBuf,
    pub train_events: usize,
    pub test_events: usize,
    pub wedges: usize,
}

/// Write a data set in the reference layout (`outer/12-2_{sector}-{side}/..._{event}.npy`,
/// `train.txt` / `test.txt` split by event: the last `round(events * test_fraction)` events are
/// test events), plus `synth.json` recording the seed and configuration.
pub fn write_dataset(
    dir: &Path,
    events: usize,
    seed: u64,
    test_fraction: f64,
) -> Result<DatasetSummary, DataError> {
    write_dataset_with(
        &SynthConfig::default(),
        dir,
        events,
        seed,
        test_fraction,
        |_| {},
    )
}

/// [`write_dataset`] with an explicit configuration and a callback after each event.
pub fn write_dataset_with(
    cfg: &SynthConfig,
    dir: &Path,
    events: usize,
    seed: u64,
    test_fraction: f64,
    mut on_event: impl FnMut(usize),
) -> Result<DatasetSummary, DataError> {
    if !(0.0..=1.0).contains(&test_fraction) {
        return Err(DataError::Invalid {
            path: dir.to_path_buf(),
            message: format!("test fraction {test_fraction} is not in [0, 1]"),
        });
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let test_events = ((events as f64) * test_fraction).round() as usize;
    let train_events = events - test_events;
    for k in 0..WEDGES_PER_EVENT {
        let folder = dir
            .join(wedge_relative_path(seed, 0, k))
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        std::fs::create_dir_all(&folder).map_err(io(&folder))?;
    }
    let all: Vec<usize> = (0..WEDGES_PER_EVENT).collect();
    let mut train = String::new();
    let mut test = String::new();
    for event in 0..events {
        let wedges = generate_event_with(cfg, seed, event as u64, &all);
        wedges.par_iter().enumerate().try_for_each(|(k, w)| {
            write_wedge(&dir.join(wedge_relative_path(seed, event as u64, k)), w)
        })?;
        let list = if event < train_events {
            &mut train
        } else {
            &mut test
        };
        for k in 0..WEDGES_PER_EVENT {
            list.push_str(&wedge_relative_path(seed, event as u64, k).to_string_lossy());
            list.push('\n');
        }
        on_event(event);
    }
    for (name, text) in [("train.txt", &train), ("test.txt", &test)] {
        let p = dir.join(name);
        std::fs::write(&p, text).map_err(io(&p))?;
    }
    let meta = serde_json::json!({ "generator": "bcae-rs synth", "seed": seed, "events": events,
        "test_fraction": test_fraction, "config": cfg });
    let p = dir.join("synth.json");
    std::fs::write(&p, serde_json::to_string_pretty(&meta).unwrap_or_default()).map_err(io(&p))?;
    Ok(DatasetSummary {
        root: dir.to_path_buf(),
        train_events,
        test_events,
        wedges: events * WEDGES_PER_EVENT,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::stats::{self, check_targets};
    use crate::data::{Dataset, Split};

    #[test]
    fn same_seed_same_wedges_other_seed_other_wedges() {
        let cfg = SynthConfig::default();
        let a = generate_event_with(&cfg, 3, 1, &[0, 13]);
        let b = generate_event_with(&cfg, 3, 1, &[0, 13]);
        assert!(a == b, "same seed and event gave different wedges");
        // Rendering a subset gives the same wedges as rendering the whole event.
        let all = generate_event_with(&cfg, 3, 1, &(0..WEDGES_PER_EVENT).collect::<Vec<_>>());
        assert!(
            a[0] == all[0] && a[1] == all[13],
            "subset rendering differs"
        );
        let c = generate_event_with(&cfg, 4, 1, &[0]);
        assert!(a[0] != c[0], "another seed gave the same wedge");
        let d = generate_event_with(&cfg, 3, 2, &[0]);
        assert!(a[0] != d[0], "another event gave the same wedge");
        let first = generate_wedges(3, 2);
        let event0 = generate_event(3, 0);
        assert!(
            first[..] == event0[..2],
            "generate_wedges is not the first wedges of event 0"
        );
    }

    /// Over 32 wedges (2 from each of 16 events, so event-to-event variation is sampled) the
    /// generator meets every data-spec target. Tolerances are the data spec's; only the
    /// wedge-to-wedge sd gets a wider band (1.5-6 % instead of 2-5 %), since an sd estimated from
    /// 32 wedges of 16 events has a relative standard error of about 20 %. The full check on 100+
    /// wedges is `bcae synth --events 5` + `bcae stats`.
    #[test]
    fn generator_meets_the_data_spec_targets() {
        let cfg = SynthConfig::default();
        let wedges: Vec<Wedge> = (0..16u64)
            .flat_map(|e| {
                generate_event_with(&cfg, 11, e, &[(e % 12) as usize, 12 + (e % 12) as usize])
            })
            .collect();
        let s = stats::compute(&wedges);
        for c in check_targets(&s) {
            if c.name == "occupancy sd between wedges" {
                assert!(
                    (0.015..=0.06).contains(&s.occupancy_sd),
                    "occupancy sd {}",
                    s.occupancy_sd
                );
            } else {
                assert!(
                    c.pass,
                    "target '{}' ({}) missed: {}",
                    c.name, c.target, c.value
                );
            }
        }
        // Physics sanity: zero suppression and saturation hold, nothing below 64 survives.
        assert!(s.smallest_nonzero >= 64);
        assert!(wedges.iter().all(|w| w.adc.iter().all(|&v| v <= ADC_MAX)));
    }

    #[test]
    fn write_dataset_uses_the_reference_layout() {
        let dir = tempfile::tempdir().unwrap();
        let summary = write_dataset(dir.path(), 2, 5, 0.5).unwrap();
        assert_eq!(
            (summary.train_events, summary.test_events, summary.wedges),
            (1, 1, 48)
        );
        let train = Dataset::open(dir.path(), Split::Train).unwrap();
        let test = Dataset::open(dir.path(), Split::Test).unwrap();
        assert_eq!((train.len(), test.len()), (24, 24));
        let p = train.paths()[13]
            .strip_prefix(dir.path())
            .unwrap()
            .to_string_lossy()
            .into_owned();
        assert_eq!(p, "outer/12-2_1-1/Synth_seed5.xml_TPCMLDataInterface_0.npy");
        assert!(test.paths()[0].to_string_lossy().ends_with("_1.npy"));
        assert!(
            train.load(13).unwrap() == generate_event(5, 0)[13],
            "written wedge differs"
        );
        assert!(dir.path().join("synth.json").is_file());
        assert!(write_dataset(dir.path(), 1, 5, 1.5).is_err());
    }
}
