//! Prints the generated IR (unoptimized) or assembly (after O3) of one kernel spec.
//!
//! `cargo run -p fpx-llvm --release --example emit_asm -- [--ir | --so PATH] FORMAT K N GROUP [native|v3|v4|v4vnni] [f32|int8]`
//! (`--so PATH` writes the linked shared library instead).

use fpx_llvm::{compile_cpu, emit_ir_and_asm, Activations, CpuTarget, QuantGemm};
use fpx_quant::Format;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let ir = args.first().is_some_and(|a| a == "--ir");
    if ir {
        args.remove(0);
    }
    let so = if args.first().is_some_and(|a| a == "--so") {
        args.remove(0);
        Some(args.remove(0))
    } else {
        None
    };
    let usage = "usage: emit_asm [--ir | --so PATH] FORMAT K N GROUP [native|v3|v4|v4vnni] [f32|int8]";
    let format = Format::parse(args.first().expect(usage)).expect("unknown format");
    let num = |i: usize| args.get(i).expect(usage).parse::<usize>().expect("number");
    let activations = args.get(5).map_or(Activations::F32, |a| Activations::parse(a).expect("activations: f32 or int8"));
    let spec = QuantGemm { format, k: num(1), n: num(2), group_size: num(3), activations };
    let target = match args.get(4).map(String::as_str) {
        None | Some("v3") => CpuTarget::X86_64V3,
        Some("v4") => CpuTarget::X86_64V4,
        Some("v4vnni") => CpuTarget::X86_64V4Vnni,
        Some("native") => CpuTarget::Native,
        Some(t) => panic!("unknown target {t}"),
    };
    if let Some(path) = so {
        let compiled = compile_cpu(&[spec], target).expect("compile");
        std::fs::write(&path, &compiled.shared_object).expect("write");
        println!("wrote {path}: {} bytes, target {}, features {:?}", compiled.shared_object.len(), compiled.target, compiled.features);
        return;
    }
    let (ir_text, asm) = emit_ir_and_asm(&[spec], target).expect("codegen");
    print!("{}", if ir { ir_text } else { asm });
}
