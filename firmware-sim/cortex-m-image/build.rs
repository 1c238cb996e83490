//! Puts each binary's memory map (`memory/*.x`, as `memory.x`) on its linker search path, checks that the inputs `firmware-sim qemu`
//! prepares are there (the image embeds them with include_bytes!), and sizes the encoder's
//! scratch buffer for the embedded weights (`$OUT_DIR/sizes.rs`).
use std::path::PathBuf;

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    // Each binary links with its own memory.x (cortex-m-rt's link.x includes it by that name).
    for (bin, file) in [
        ("bcae-cortex-m-image", "memory/whole-wedge.x"),
        ("bcae-cortex-m-stream", "memory/stream-256k.x"),
    ] {
        let dir = out.join(bin);
        std::fs::create_dir_all(&dir).expect("OUT_DIR writable");
        std::fs::copy(file, dir.join("memory.x")).expect("memory/*.x next to Cargo.toml");
        println!("cargo:rustc-link-arg-bin={bin}=-L{}", dir.display());
        println!("cargo:rerun-if-changed={file}");
    }
    println!("cargo:rerun-if-env-changed=BCAE_IMAGE_INPUTS");
    match std::env::var("BCAE_IMAGE_INPUTS") {
        Ok(dir) => {
            for file in ["weights.bcae.postcard", "wedges.bin"] {
                let path = PathBuf::from(&dir).join(file);
                if !path.is_file() {
                    panic!("BCAE_IMAGE_INPUTS={dir}: {} is missing; let `firmware-sim qemu` prepare the inputs", path.display());
                }
                println!("cargo:rerun-if-changed={}", path.display());
            }
            let weights = std::fs::read(PathBuf::from(&dir).join("weights.bcae.postcard")).expect("weights readable");
            let encoder = match encoder_nostd::encoder::Encoder::parse(&weights) {
                Ok(e) => e,
                Err(e) => panic!("{dir}/weights.bcae.postcard: not usable int8 weights: {e}"),
            };
            let stream = match encoder_nostd::streaming::StreamEncoder::new(encoder.clone()) {
                Ok(s) => s,
                Err(e) => panic!("{dir}/weights.bcae.postcard: no streaming plan: {e}"),
            };
            let sizes = format!(
                "/// The encoder's scratch and code for the embedded weights (computed by build.rs).\n\
                 #[allow(dead_code)]\n\
                 const SCRATCH_BYTES: usize = {};\n\
                 /// The streaming encoder's line buffers, one code slice, the whole code.\n\
                 #[allow(dead_code)]\n\
                 const STREAM_SCRATCH_BYTES: usize = {};\n\
                 #[allow(dead_code)]\n\
                 const CODE_SLICE_BYTES: usize = {};\n\
                 #[allow(dead_code)]\n\
                 const CODE_BYTES: usize = {};\n",
                encoder.scratch_len() + encoder.code_len(),
                stream.scratch_bytes(),
                stream.code_slice_len(),
                encoder.code_len()
            );
            std::fs::write(out.join("sizes.rs"), sizes).expect("OUT_DIR writable");
        }
        Err(_) => panic!(
            "BCAE_IMAGE_INPUTS is not set: this image embeds a weights file and wedges that \
             `firmware-sim qemu --weights W` prepares and then builds the image with; run that instead"
        ),
    }
}
