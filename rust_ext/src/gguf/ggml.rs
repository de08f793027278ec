//! ggml tensor types: block size (elements per block) and type size (bytes
//! per block), as in ggml.c's `type_traits` and gguf-py's `GGML_QUANT_SIZES`.

const QK_K: u64 = 256;

/// `(block size, bytes per block)` of ggml type `id`, or None for ids that
/// were never assigned or whose support was removed from GGUF files
/// (4, 5: Q4_2/Q4_3; 31-33: Q4_0_4_4...; 36-38: IQ4_NL_4_4...).
pub fn type_size(id: u32) -> Option<(u64, u64)> {
    Some(match id {
        0 => (1, 4),                                           // F32
        1 => (1, 2),                                           // F16
        2 => (32, 2 + 16),                                     // Q4_0
        3 => (32, 2 + 2 + 16),                                 // Q4_1
        6 => (32, 2 + 4 + 16),                                 // Q5_0
        7 => (32, 2 + 2 + 4 + 16),                             // Q5_1
        8 => (32, 2 + 32),                                     // Q8_0
        9 => (32, 4 + 4 + 32),                                 // Q8_1
        10 => (QK_K, 2 + 2 + QK_K / 16 + QK_K / 4),            // Q2_K
        11 => (QK_K, 2 + QK_K / 4 + QK_K / 8 + 12),            // Q3_K
        12 => (QK_K, 2 + 2 + QK_K / 2 + 12),                   // Q4_K
        13 => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12),        // Q5_K
        14 => (QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16),     // Q6_K
        15 => (QK_K, 4 + QK_K + QK_K / 8),                     // Q8_K
        16 => (QK_K, 2 + QK_K / 4),                            // IQ2_XXS
        17 => (QK_K, 2 + QK_K / 4 + QK_K / 32),                // IQ2_XS
        18 => (QK_K, 2 + QK_K / 4 + QK_K / 8),                 // IQ3_XXS
        19 => (QK_K, 2 + QK_K / 8 + QK_K / 16),                // IQ1_S
        20 => (32, 2 + 16),                                    // IQ4_NL
        21 => (QK_K, 2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4), // IQ3_S
        22 => (QK_K, 2 + QK_K / 4 + QK_K / 16),                // IQ2_S
        23 => (QK_K, 2 + 2 + QK_K / 2 + QK_K / 64),            // IQ4_XS
        24 => (1, 1),                                          // I8
        25 => (1, 2),                                          // I16
        26 => (1, 4),                                          // I32
        27 => (1, 8),                                          // I64
        28 => (1, 8),                                          // F64
        29 => (QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32),        // IQ1_M
        30 => (1, 2),                                          // BF16
        34 => (QK_K, 2 + 4 * 13),                              // TQ1_0
        35 => (QK_K, 2 + 64),                                  // TQ2_0
        39 => (32, 1 + 16),                                    // MXFP4
        40 => (64, 4 + 32),                                    // NVFP4
        41 => (128, 2 + 16),                                   // Q1_0
        42 => (64, 2 + 16),                                    // Q2_0
        _ => return None,
    })
}
