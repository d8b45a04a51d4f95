//! A gravitational N-body simulation: a star cluster of `bodies` point masses with softened
//! (Plummer) gravity, integrated by the kick-drift-kick leapfrog (velocity Verlet).
//!
//! The result is the same bytes on every machine and in Wasm or native code: the initial
//! conditions come from a seeded SplitMix64 generator, the arithmetic is only IEEE 754
//! addition, subtraction, multiplication, division and square root of `f64` (correctly
//! rounded everywhere, unlike `sin` or `powf`, whose libm implementations differ), and every
//! sum is taken in a fixed order.
//!
//! A long run reports its fraction done in a `progress` file and saves its state in a
//! `checkpoint` file in its working directory, so that a restarted run resumes where the last
//! checkpoint left off and still prints exactly what an uninterrupted run prints.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::path::Path;

/// Time step, in units where G = 1, the cluster's total mass is 1 and its radius 1 (a
/// crossing time is about 1.3, so a step is a small fraction of an orbit).
pub const DT: f64 = 1e-3;
/// Plummer softening length: keeps close encounters from needing ever smaller steps.
pub const SOFTENING: f64 = 0.05;
/// The most bodies a run accepts; the cost of a step grows with the square of the count.
pub const MAX_BODIES: u32 = 100_000;
/// The file the fraction done is written to, in the working directory.
pub const PROGRESS_FILE: &str = "progress";
/// The file the state is saved in, in the working directory.
pub const CHECKPOINT_FILE: &str = "checkpoint";
/// How many progress reports a run makes (one per 1% of the steps).
const PROGRESS_REPORTS: u64 = 100;
/// How many checkpoints a run writes (one per 5% of the steps).
const CHECKPOINTS: u64 = 20;

type Vec3 = [f64; 3];

/// What to simulate: the whole input of a work unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Params {
    pub bodies: u32,
    pub steps: u64,
    pub seed: u64,
}

impl Params {
    /// Checks the parameters a run can use.
    pub fn validate(&self) -> Result<(), String> {
        if !(2..=MAX_BODIES).contains(&self.bodies) {
            return Err(format!("BODIES must be from 2 to {MAX_BODIES}"));
        }
        Ok(())
    }
}

/// SplitMix64: tiny, fast and fully specified, so the same seed gives the same bodies
/// everywhere (the sandbox's own random numbers are seeded per work unit, not per input).
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1): 53 random bits, which an `f64` holds exactly.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [-1, 1).
    fn symmetric(&mut self) -> f64 {
        2.0 * self.unit() - 1.0
    }
}

/// The vector from `from` to `to`.
fn difference(from: Vec3, to: Vec3) -> Vec3 {
    [to[0] - from[0], to[1] - from[1], to[2] - from[2]]
}

fn dot(a: Vec3, b: Vec3) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

/// The state of a simulation: everything a step reads and writes.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    params: Params,
    masses: Vec<f64>,
    /// Steps taken so far.
    step: u64,
    positions: Vec<Vec3>,
    velocities: Vec<Vec3>,
    /// The accelerations at `positions`: a function of them, kept only to save recomputing
    /// them at the start of each step (and recomputed, to the bit, on resuming).
    accelerations: Vec<Vec3>,
}

impl Simulation {
    /// The initial conditions for `params`: bodies of random mass spread uniformly through
    /// the unit sphere, the centre of mass at rest at the origin, and random velocities scaled
    /// so that the cluster starts in virial equilibrium (kinetic energy half the magnitude of
    /// the potential energy), neither collapsing nor flying apart as a whole.
    pub fn new(params: Params) -> Self {
        let n = params.bodies as usize;
        let mut random = SplitMix64(params.seed);
        let mut masses: Vec<f64> = (0..n).map(|_| 0.5 + random.unit()).collect();
        let mut total = 0.0;
        for &mass in &masses {
            total += mass;
        }
        for mass in &mut masses {
            *mass /= total;
        }
        let mut positions: Vec<Vec3> = (0..n)
            .map(|_| {
                loop {
                    let point = [random.symmetric(), random.symmetric(), random.symmetric()];
                    if dot(point, point) <= 1.0 {
                        break point;
                    }
                }
            })
            .collect();
        let mut velocities: Vec<Vec3> =
            (0..n).map(|_| [random.symmetric(), random.symmetric(), random.symmetric()]).collect();
        remove_mean(&mut positions, &masses);
        remove_mean(&mut velocities, &masses);
        let kinetic = kinetic_energy(&masses, &velocities);
        let potential = potential_energy(&masses, &positions);
        if kinetic > 0.0 {
            let scale = (-potential / (2.0 * kinetic)).sqrt();
            for velocity in &mut velocities {
                for component in velocity {
                    *component *= scale;
                }
            }
        }
        let accelerations = accelerations(&masses, &positions);
        Self { params, masses, step: 0, positions, velocities, accelerations }
    }

    /// Steps taken so far.
    pub fn step_count(&self) -> u64 {
        self.step
    }

    /// Kinetic plus (softened) potential energy: constant but for the integrator's error.
    pub fn energy(&self) -> f64 {
        kinetic_energy(&self.masses, &self.velocities) + potential_energy(&self.masses, &self.positions)
    }

    /// One leapfrog step: half a kick, a drift, new accelerations, half a kick.
    pub fn step(&mut self) {
        let half = 0.5 * DT;
        for (velocity, acceleration) in self.velocities.iter_mut().zip(&self.accelerations) {
            for axis in 0..3 {
                velocity[axis] += acceleration[axis] * half;
            }
        }
        for (position, velocity) in self.positions.iter_mut().zip(&self.velocities) {
            for axis in 0..3 {
                position[axis] += velocity[axis] * DT;
            }
        }
        self.accelerations = accelerations(&self.masses, &self.positions);
        for (velocity, acceleration) in self.velocities.iter_mut().zip(&self.accelerations) {
            for axis in 0..3 {
                velocity[axis] += acceleration[axis] * half;
            }
        }
        self.step += 1;
    }

    /// The state as checkpoint bytes (see [`Simulation::from_checkpoint`]).
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(checkpoint_len(self.params.bodies));
        bytes.extend_from_slice(CHECKPOINT_MAGIC);
        bytes.extend_from_slice(&self.params.bodies.to_le_bytes());
        bytes.extend_from_slice(&self.params.steps.to_le_bytes());
        bytes.extend_from_slice(&self.params.seed.to_le_bytes());
        bytes.extend_from_slice(&DT.to_le_bytes());
        bytes.extend_from_slice(&SOFTENING.to_le_bytes());
        bytes.extend_from_slice(&self.step.to_le_bytes());
        for vector in self.positions.iter().chain(&self.velocities) {
            for component in vector {
                bytes.extend_from_slice(&component.to_le_bytes());
            }
        }
        let checksum = fnv1a(&bytes);
        bytes.extend_from_slice(&checksum.to_le_bytes());
        bytes
    }

    /// Restores a simulation of `params` from checkpoint bytes. The format, all little-endian:
    /// the magic `NBODYCP1`; bodies (u32), steps, seed (u64); the time step and the softening
    /// (f64, so a build with other physics refuses the checkpoint); the steps taken (u64); the
    /// positions and then the velocities (3 f64 per body); an FNV-1a checksum (u64) of all
    /// the bytes before it, which catches a torn or damaged file.
    pub fn from_checkpoint(params: Params, bytes: &[u8]) -> Result<Self, CheckpointError> {
        let damaged = |why: &str| Err(CheckpointError::Damaged(why.into()));
        if bytes.len() < HEADER_LEN + 8 || !bytes.starts_with(CHECKPOINT_MAGIC) {
            return damaged("not an nbody checkpoint");
        }
        let (body, checksum) = bytes.split_at(bytes.len() - 8);
        if fnv1a(body) != u64::from_le_bytes(checksum.try_into().expect("8 bytes")) {
            return damaged("its checksum does not match");
        }
        let mut reader = Reader(&body[CHECKPOINT_MAGIC.len()..]);
        let saved = Params { bodies: reader.u32(), steps: reader.u64(), seed: reader.u64() };
        let (dt, softening) = (reader.f64(), reader.f64());
        if saved != params || dt.to_bits() != DT.to_bits() || softening.to_bits() != SOFTENING.to_bits() {
            return Err(CheckpointError::OtherParameters(format!(
                "bodies {} steps {} seed {} dt {dt:e} softening {softening:e}",
                saved.bodies, saved.steps, saved.seed
            )));
        }
        if bytes.len() != checkpoint_len(params.bodies) {
            return damaged("its length does not match its body count");
        }
        let step = reader.u64();
        if step > params.steps {
            return damaged("it is past the last step");
        }
        let mut vectors = (0..2 * params.bodies).map(|_| [reader.f64(), reader.f64(), reader.f64()]);
        let positions: Vec<Vec3> = vectors.by_ref().take(params.bodies as usize).collect();
        let velocities: Vec<Vec3> = vectors.collect();
        if positions.iter().chain(&velocities).flatten().any(|component| !component.is_finite()) {
            return damaged("it holds a number that is not finite");
        }
        // The masses are not saved: they follow from the seed, as at the start.
        let mut simulation = Self::new(params);
        simulation.accelerations = accelerations(&simulation.masses, &positions);
        simulation.step = step;
        simulation.positions = positions;
        simulation.velocities = velocities;
        Ok(simulation)
    }
}

/// Why a checkpoint cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckpointError {
    Damaged(String),
    OtherParameters(String),
}

impl fmt::Display for CheckpointError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Damaged(why) => write!(f, "it is damaged: {why}"),
            Self::OtherParameters(saved) => write!(f, "it is for other parameters ({saved})"),
        }
    }
}

const CHECKPOINT_MAGIC: &[u8; 8] = b"NBODYCP1";
/// Magic, bodies, steps, seed, time step, softening and steps taken.
const HEADER_LEN: usize = 8 + 4 + 8 + 8 + 8 + 8 + 8;

fn checkpoint_len(bodies: u32) -> usize {
    HEADER_LEN + bodies as usize * 6 * 8 + 8
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in bytes {
        hash = (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Reads little-endian numbers from a checkpoint whose length has been checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().expect("split at N")
    }

    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.take())
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.take())
    }

    fn f64(&mut self) -> f64 {
        f64::from_le_bytes(self.take())
    }
}

/// Moves the mass-weighted mean of `vectors` to zero.
fn remove_mean(vectors: &mut [Vec3], masses: &[f64]) {
    let mut mean = [0.0; 3];
    for (vector, &mass) in vectors.iter().zip(masses) {
        for axis in 0..3 {
            mean[axis] += mass * vector[axis];
        }
    }
    for vector in vectors {
        for axis in 0..3 {
            vector[axis] -= mean[axis];
        }
    }
}

fn kinetic_energy(masses: &[f64], velocities: &[Vec3]) -> f64 {
    let mut energy = 0.0;
    for (&mass, &velocity) in masses.iter().zip(velocities) {
        energy += 0.5 * mass * dot(velocity, velocity);
    }
    energy
}

fn potential_energy(masses: &[f64], positions: &[Vec3]) -> f64 {
    let softening2 = SOFTENING * SOFTENING;
    let mut energy = 0.0;
    for i in 0..positions.len() {
        for j in i + 1..positions.len() {
            let d = difference(positions[i], positions[j]);
            energy -= masses[i] * masses[j] / (dot(d, d) + softening2).sqrt();
        }
    }
    energy
}

/// The softened gravitational acceleration of every body, each pair visited once.
fn accelerations(masses: &[f64], positions: &[Vec3]) -> Vec<Vec3> {
    let softening2 = SOFTENING * SOFTENING;
    let mut accelerations = vec![[0.0; 3]; positions.len()];
    for i in 0..positions.len() {
        for j in i + 1..positions.len() {
            let d = difference(positions[i], positions[j]);
            let inverse = 1.0 / (dot(d, d) + softening2).sqrt();
            let inverse3 = inverse * inverse * inverse;
            let (towards_j, towards_i) = (masses[j] * inverse3, masses[i] * inverse3);
            for axis in 0..3 {
                accelerations[i][axis] += d[axis] * towards_j;
                accelerations[j][axis] -= d[axis] * towards_i;
            }
        }
    }
    accelerations
}

/// The run's output: the parameters, the energy at the start and the end, and the final
/// position of every body, one per line, every number to 17 decimal places.
pub fn report(simulation: &Simulation, start_energy: f64) -> String {
    let Params { bodies, steps, seed } = simulation.params;
    let mut out = format!("nbody bodies {bodies} steps {steps} seed {seed} dt {DT:.17e} softening {SOFTENING:.17e}\n");
    // Writing to a String cannot fail.
    let _ = writeln!(out, "energy start {start_energy:.17e} end {:.17e}", simulation.energy());
    for [x, y, z] in &simulation.positions {
        let _ = writeln!(out, "{x:.17e} {y:.17e} {z:.17e}");
    }
    out
}

/// Runs the simulation of `params` to its last step in `dir` (the working directory, which
/// is the scratch directory under wasmgrid) and returns its output. It resumes from
/// `dir/checkpoint` when that holds a usable state for these parameters, reports its fraction
/// done in `dir/progress`, and saves checkpoints along the way. What it has to say about the
/// checkpoint goes to `notes`.
pub fn run(params: Params, dir: &Path, notes: &mut dyn Write) -> io::Result<String> {
    Ok(run_until(params, dir, notes, params.steps)?.expect("ran to the last step"))
}

/// [`run`], but stopping (as if killed) once `halt` steps have been taken; the output if
/// the run got to the end.
fn run_until(params: Params, dir: &Path, notes: &mut dyn Write, halt: u64) -> io::Result<Option<String>> {
    let start = Simulation::new(params);
    let start_energy = start.energy();
    let mut simulation = match resume(params, dir, notes)? {
        Some(resumed) => resumed,
        None => start,
    };
    let progress_every = (params.steps / PROGRESS_REPORTS).max(1);
    let checkpoint_every = (params.steps / CHECKPOINTS).max(1);
    write_progress(dir, &simulation)?;
    while simulation.step < params.steps {
        if simulation.step == halt {
            return Ok(None);
        }
        simulation.step();
        if simulation.step % checkpoint_every == 0 && simulation.step < params.steps {
            replace_file(dir, CHECKPOINT_FILE, &simulation.checkpoint(), true)?;
        }
        if simulation.step % progress_every == 0 || simulation.step == params.steps {
            write_progress(dir, &simulation)?;
        }
    }
    // A crash while one of these was being written leaves it behind, and only the two final
    // names are kept out of the output.
    for name in [CHECKPOINT_FILE, PROGRESS_FILE] {
        remove_if_present(&dir.join(format!("{name}.tmp")))?;
    }
    Ok(Some(report(&simulation, start_energy)))
}

/// The saved state in `dir`, if there is one for these parameters.
fn resume(params: Params, dir: &Path, notes: &mut dyn Write) -> io::Result<Option<Simulation>> {
    let bytes = match std::fs::read(dir.join(CHECKPOINT_FILE)) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            writeln!(notes, "nbody: cannot read the checkpoint ({error}); starting from the beginning")?;
            return Ok(None);
        }
    };
    match Simulation::from_checkpoint(params, &bytes) {
        Ok(simulation) => {
            writeln!(notes, "nbody: resuming from the checkpoint at step {}", simulation.step)?;
            Ok(Some(simulation))
        }
        Err(error) => {
            writeln!(notes, "nbody: ignoring the checkpoint: {error}; starting from the beginning")?;
            Ok(None)
        }
    }
}

fn write_progress(dir: &Path, simulation: &Simulation) -> io::Result<()> {
    let fraction =
        if simulation.params.steps == 0 { 1.0 } else { simulation.step as f64 / simulation.params.steps as f64 };
    replace_file(dir, PROGRESS_FILE, format!("{fraction:.4}\n").as_bytes(), false)
}

/// Writes `dir/name` whole or not at all: into `name.tmp`, then renamed over `name`, so
/// whoever reads it (the client, or this program after a crash) never sees half a file.
/// `durable` also flushes it to disk first, so that a power cut leaves the old or new file.
fn replace_file(dir: &Path, name: &str, contents: &[u8], durable: bool) -> io::Result<()> {
    let temporary = dir.join(format!("{name}.tmp"));
    let mut file = std::fs::File::create(&temporary)?;
    file.write_all(contents)?;
    if durable {
        file.sync_all()?;
    }
    drop(file);
    std::fs::rename(&temporary, dir.join(name))
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, empty directory for one test, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> Self {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let name = format!("nbody-test-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
            let path = std::env::temp_dir().join(name);
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const PARAMS: Params = Params { bodies: 12, steps: 400, seed: 7 };

    fn straight_run(params: Params) -> String {
        let dir = TempDir::new();
        run(params, &dir.0, &mut Vec::new()).unwrap()
    }

    #[test]
    fn energy_is_roughly_conserved() {
        let mut simulation = Simulation::new(Params { bodies: 16, steps: 3000, seed: 1 });
        let start = simulation.energy();
        assert!(start < 0.0, "a cluster in virial equilibrium is bound: {start}");
        for _ in 0..3000 {
            simulation.step();
        }
        let drift = ((simulation.energy() - start) / start).abs();
        assert!(drift < 1e-4, "relative energy drift {drift:e}");
    }

    #[test]
    fn the_same_input_gives_the_same_bytes_and_another_seed_other_bytes() {
        let output = straight_run(PARAMS);
        assert_eq!(output, straight_run(PARAMS));
        assert_ne!(output, straight_run(Params { seed: 8, ..PARAMS }));
        let lines: Vec<&str> = output.lines().collect();
        assert_eq!(lines.len(), 2 + PARAMS.bodies as usize);
        assert!(lines[0].starts_with("nbody bodies 12 steps 400 seed 7 "), "{}", lines[0]);
    }

    #[test]
    fn a_finished_run_leaves_full_progress_and_no_temporary_files() {
        let dir = TempDir::new();
        std::fs::write(dir.0.join("checkpoint.tmp"), b"torn").unwrap();
        run(PARAMS, &dir.0, &mut Vec::new()).unwrap();
        assert_eq!(std::fs::read_to_string(dir.0.join(PROGRESS_FILE)).unwrap(), "1.0000\n");
        let mut names: Vec<String> =
            std::fs::read_dir(&dir.0).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, [CHECKPOINT_FILE, PROGRESS_FILE]);
    }

    #[test]
    fn resuming_from_a_checkpoint_gives_the_output_of_a_straight_run() {
        let dir = TempDir::new();
        // Killed at 57% of the way: the last checkpoint is at 55%.
        assert_eq!(run_until(PARAMS, &dir.0, &mut Vec::new(), 228).unwrap(), None);
        assert_eq!(std::fs::read_to_string(dir.0.join(PROGRESS_FILE)).unwrap(), "0.5700\n");
        let saved = Simulation::from_checkpoint(PARAMS, &std::fs::read(dir.0.join(CHECKPOINT_FILE)).unwrap()).unwrap();
        assert_eq!(saved.step_count(), 220);

        let mut notes = Vec::new();
        let resumed = run(PARAMS, &dir.0, &mut notes).unwrap();
        assert_eq!(String::from_utf8(notes).unwrap(), "nbody: resuming from the checkpoint at step 220\n");
        assert_eq!(resumed, straight_run(PARAMS));
    }

    #[test]
    fn a_checkpoint_round_trips_to_the_bit() {
        let mut simulation = Simulation::new(PARAMS);
        for _ in 0..10 {
            simulation.step();
        }
        assert_eq!(Simulation::from_checkpoint(PARAMS, &simulation.checkpoint()), Ok(simulation));
    }

    #[test]
    fn damaged_or_foreign_checkpoints_are_ignored() {
        let mut simulation = Simulation::new(PARAMS);
        simulation.step();
        let good = simulation.checkpoint();
        let mut flipped = good.clone();
        flipped[HEADER_LEN + 3] ^= 1;
        let foreign = Simulation::new(Params { seed: 99, ..PARAMS }).checkpoint();
        let cases: [(&[u8], &str); 4] = [
            (b"garbage", "damaged: not an nbody checkpoint"),
            (&good[..good.len() - 1], "damaged: its checksum does not match"),
            (&flipped, "damaged: its checksum does not match"),
            (&foreign, "for other parameters (bodies 12 steps 400 seed 99"),
        ];
        let expected = straight_run(PARAMS);
        for (bytes, reason) in cases {
            let dir = TempDir::new();
            std::fs::write(dir.0.join(CHECKPOINT_FILE), bytes).unwrap();
            let mut notes = Vec::new();
            assert_eq!(run(PARAMS, &dir.0, &mut notes).unwrap(), expected);
            let notes = String::from_utf8(notes).unwrap();
            assert!(notes.starts_with("nbody: ignoring the checkpoint: it is "), "{notes}");
            assert!(notes.contains(reason), "{notes} should say {reason}");
        }
    }

    #[test]
    fn zero_steps_report_the_initial_state() {
        let output = straight_run(Params { steps: 0, ..PARAMS });
        let energy = Simulation::new(PARAMS).energy();
        assert_eq!(output.lines().nth(1).unwrap(), format!("energy start {energy:.17e} end {energy:.17e}"));
    }
}
