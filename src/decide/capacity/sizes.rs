//! GPU counts of Azure VM sizes: what `node.kubernetes.io/instance-type` says a node should
//! have. Every number is from the size's page in Azure's documentation (MicrosoftDocs
//! `azure-compute-docs` `articles/virtual-machines/sizes/gpu-accelerated/`, rendered at the URLs
//! below; retired series from `azure-docs` `articles/virtual-machines/`), read in August 2026.
//! Sizes whose count no Azure page gives are not listed: a node of such a size is expected to
//! have "at least one" GPU and its status says the size is unknown. Sizes are compared
//! case-insensitively (AKS, AgentBaker and Karpenter lower-case them).

/// A whole-GPU NVIDIA size: its name, NVIDIA GPUs per VM (as the device plugin sees them: one
/// per CUDA device) and the GPU model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuSize {
    pub name: &'static str,
    pub gpus: u32,
    pub model: &'static str,
}

const fn size(name: &'static str, gpus: u32, model: &'static str) -> GpuSize {
    GpuSize { name, gpus, model }
}

pub const NVIDIA_SIZES: &[GpuSize] = &[
    // NC (K80), retired 2023-09-06. 1 GPU = one-half K80 card.
    // https://learn.microsoft.com/azure/virtual-machines/nc-series
    // (MicrosoftDocs/azure-docs articles/virtual-machines/nc-series.md, nc-series-retirement.md)
    size("Standard_NC6", 1, "Tesla K80"),
    size("Standard_NC12", 2, "Tesla K80"),
    size("Standard_NC24", 4, "Tesla K80"),
    size("Standard_NC24r", 4, "Tesla K80"),
    // NCv2 (P100), retired 2023-09-06.
    // https://learn.microsoft.com/azure/virtual-machines/ncv2-series
    // (MicrosoftDocs/azure-docs articles/virtual-machines/ncv2-series.md, ncv2-series-retirement.md)
    size("Standard_NC6s_v2", 1, "Tesla P100"),
    size("Standard_NC12s_v2", 2, "Tesla P100"),
    size("Standard_NC24s_v2", 4, "Tesla P100"),
    size("Standard_NC24rs_v2", 4, "Tesla P100"),
    // NCv3 (V100 16GB), retired 2025-09-30.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ncv3-series
    size("Standard_NC6s_v3", 1, "Tesla V100 16GB"),
    size("Standard_NC12s_v3", 2, "Tesla V100 16GB"),
    size("Standard_NC24s_v3", 4, "Tesla V100 16GB"),
    size("Standard_NC24rs_v3", 4, "Tesla V100 16GB"),
    // NCasT4_v3 (T4 16GB).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ncast4v3-series
    size("Standard_NC4as_T4_v3", 1, "Tesla T4"),
    size("Standard_NC8as_T4_v3", 1, "Tesla T4"),
    size("Standard_NC16as_T4_v3", 1, "Tesla T4"),
    size("Standard_NC64as_T4_v3", 4, "Tesla T4"),
    // NC_A100_v4 (A100 PCIe 80GB).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nca100v4-series
    size("Standard_NC24ads_A100_v4", 1, "A100 80GB PCIe"),
    size("Standard_NC48ads_A100_v4", 2, "A100 80GB PCIe"),
    size("Standard_NC96ads_A100_v4", 4, "A100 80GB PCIe"),
    // NCads_H100_v5 (H100 94GB).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ncadsh100v5-series
    size("Standard_NC40ads_H100_v5", 1, "H100 94GB"),
    size("Standard_NC80adis_H100_v5", 2, "H100 94GB"),
    // NCCads_H100_v5 (confidential H100 94GB).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nccadsh100v5-series
    size("Standard_NCC40ads_H100_v5", 1, "H100 94GB"),
    // NVadsA10_v5 whole-GPU sizes (vGPU, GRID driver). Fractional ones are in FRACTIONAL_OR_NON_NVIDIA.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nvadsa10v5-series
    size("Standard_NV36ads_A10_v5", 1, "A10 24GB"),
    size("Standard_NV36adms_A10_v5", 1, "A10 24GB"),
    size("Standard_NV72ads_A10_v5", 2, "A10 24GB"),
    // ND (P40 24GB), retired 2023-09-06.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nd-series
    size("Standard_ND6s", 1, "Tesla P40"),
    size("Standard_ND12s", 2, "Tesla P40"),
    size("Standard_ND24s", 4, "Tesla P40"),
    size("Standard_ND24rs", 4, "Tesla P40"),
    // NDv2 (8x V100 32GB NVLink). Count from includes/ndv2-series-specs.md ("Accelerators 8").
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndv2-series
    size("Standard_ND40rs_v2", 8, "Tesla V100 32GB"),
    // ND_A100_v4 (NDasrA100_v4, A100 40GB). NB: size name has no "_A100".
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndasra100v4-series
    size("Standard_ND96asr_v4", 8, "A100 40GB"),
    // NDm_A100_v4 (A100 80GB).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndma100v4-series
    size("Standard_ND96amsr_A100_v4", 8, "A100 80GB"),
    // ND_H100_v5.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndh100v5-series
    size("Standard_ND96isr_H100_v5", 8, "H100 80GB"),
    // ND_H200_v5.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nd-h200-v5-series
    size("Standard_ND96isr_H200_v5", 8, "H200 141GB"),
    // ND_GB200_v6 (4 Blackwell GPUs per VM).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nd-gb200-v6-series
    size("Standard_ND128isr_NDR_GB200_v6", 4, "GB200 192GB"),
    // ND_GB300_v6 (4 Blackwell Ultra GPUs per VM).
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nd-gb300-v6-series
    size("Standard_ND128isr_GB300_v6", 4, "GB300 288GB"),
    size("Standard_ND128isrG5_GB300_v6", 4, "GB300 288GB"),
    // NV (M60), retired 2023-09-06. 1 GPU = one-half M60 card (the new ACD page counts boards: 1/2,1,2).
    // https://learn.microsoft.com/azure/virtual-machines/nv-series (MicrosoftDocs/azure-docs nv-series.md)
    size("Standard_NV6", 1, "Tesla M60"),
    size("Standard_NV12", 2, "Tesla M60"),
    size("Standard_NV24", 4, "Tesla M60"),
    // NVv3 (M60, 8GB per GPU), retirement announced for 2026-09-30.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nvv3-series
    size("Standard_NV12s_v3", 1, "Tesla M60"),
    size("Standard_NV24s_v3", 2, "Tesla M60"),
    size("Standard_NV48s_v3", 4, "Tesla M60"),
    // NC_RTXPRO6000BSE_v6 (preview). Names from one stored version of the size page; Karpenter-Azure
    // lists different names (nc24l/36/72/144/288 ds_xl) -> re-check before relying on these.
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nc-rtxpro6000-bse-v6-series
    size(
        "Standard_NC128ds_xl_RTXPRO6000BSE_v6",
        1,
        "RTX PRO 6000 Blackwell Server Edition 96GB",
    ),
    size(
        "Standard_NC256ds_xl_RTXPRO6000BSE_v6",
        2,
        "RTX PRO 6000 Blackwell Server Edition 96GB",
    ),
    size(
        "Standard_NC320ds_xl_RTXPRO6000BSE_v6",
        2,
        "RTX PRO 6000 Blackwell Server Edition 96GB",
    ),
    size(
        "Standard_NC128lds_xl_RTXPRO6000BSE_v6",
        1,
        "RTX PRO 6000 Blackwell Server Edition 96GB",
    ),
    size(
        "Standard_NC256lds_xl_RTXPRO6000BSE_v6",
        2,
        "RTX PRO 6000 Blackwell Server Edition 96GB",
    ),
    size(
        "Standard_NC320lds_xl_RTXPRO6000BSE_v6",
        2,
        "RTX PRO 6000 Blackwell Server Edition 96GB",
    ),
];

/// A size that is not a number of whole NVIDIA GPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PartialSize {
    /// An NVIDIA vGPU slice: the VM sees one vGPU device (NVML names it by its profile, e.g.
    /// `NVIDIA A10-4Q`), so the device plugin advertises one `nvidia.com/gpu`, which is this
    /// fraction of a physical GPU.
    NvidiaFraction {
        numerator: u32,
        denominator: u32,
        memory_gb: u32,
        model: &'static str,
    },
    /// AMD GPUs: never `nvidia.com/gpu`.
    Amd { model: &'static str },
}

pub const PARTIAL_SIZES: &[(&str, PartialSize)] = &[
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nvadsa10v5-series
    (
        "Standard_NV6ads_A10_v5",
        PartialSize::NvidiaFraction {
            numerator: 1,
            denominator: 6,
            memory_gb: 4,
            model: "A10",
        },
    ),
    (
        "Standard_NV12ads_A10_v5",
        PartialSize::NvidiaFraction {
            numerator: 1,
            denominator: 3,
            memory_gb: 8,
            model: "A10",
        },
    ),
    (
        "Standard_NV18ads_A10_v5",
        PartialSize::NvidiaFraction {
            numerator: 1,
            denominator: 2,
            memory_gb: 12,
            model: "A10",
        },
    ),
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/nvv4-series (AMD
    // MI25 fractions; AKS: "The NVv4 series (based on AMD GPUs) isn't supported on AKS").
    (
        "Standard_NV4as_v4",
        PartialSize::Amd {
            model: "Radeon Instinct MI25 (1/8)",
        },
    ),
    (
        "Standard_NV8as_v4",
        PartialSize::Amd {
            model: "Radeon Instinct MI25 (1/4)",
        },
    ),
    (
        "Standard_NV16as_v4",
        PartialSize::Amd {
            model: "Radeon Instinct MI25 (1/2)",
        },
    ),
    (
        "Standard_NV32as_v4",
        PartialSize::Amd {
            model: "Radeon Instinct MI25",
        },
    ),
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ngadsv620-series
    (
        "Standard_NG8ads_V620_v1",
        PartialSize::Amd {
            model: "Radeon PRO V620 (1/4)",
        },
    ),
    (
        "Standard_NG16ads_V620_v1",
        PartialSize::Amd {
            model: "Radeon PRO V620 (1/2)",
        },
    ),
    (
        "Standard_NG32ads_V620_v1",
        PartialSize::Amd {
            model: "Radeon PRO V620",
        },
    ),
    (
        "Standard_NG32adms_V620_v1",
        PartialSize::Amd {
            model: "Radeon PRO V620",
        },
    ),
    // https://learn.microsoft.com/azure/virtual-machines/sizes/gpu-accelerated/ndmi300xv5-series
    (
        "Standard_ND96isr_MI300X_v5",
        PartialSize::Amd {
            model: "8 x Instinct MI300X",
        },
    ),
];

/// What Azure's documentation says about a VM size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SizeFacts {
    Whole(GpuSize),
    Partial(&'static str, PartialSize),
}

pub fn lookup(size: &str) -> Option<SizeFacts> {
    if let Some(s) = NVIDIA_SIZES
        .iter()
        .find(|s| s.name.eq_ignore_ascii_case(size))
    {
        return Some(SizeFacts::Whole(*s));
    }
    PARTIAL_SIZES
        .iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(size))
        .map(|(name, p)| SizeFacts::Partial(name, *p))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Spot checks against the cited pages, one per family.
    #[test]
    fn counts_are_the_documented_ones() {
        let gpus = |name: &str| match lookup(name) {
            Some(SizeFacts::Whole(s)) => s.gpus,
            other => panic!("{name}: {other:?}"),
        };
        for (name, want) in [
            ("Standard_NC6s_v3", 1),
            ("Standard_NC24rs_v3", 4),
            ("Standard_NC4as_T4_v3", 1),
            ("Standard_NC64as_T4_v3", 4),
            ("Standard_NC24ads_A100_v4", 1),
            ("Standard_NC96ads_A100_v4", 4),
            ("Standard_NC40ads_H100_v5", 1),
            ("Standard_NC80adis_H100_v5", 2),
            ("Standard_ND40rs_v2", 8),
            ("Standard_ND96asr_v4", 8),
            ("Standard_ND96amsr_A100_v4", 8),
            ("Standard_ND96isr_H100_v5", 8),
            ("Standard_ND96isr_H200_v5", 8),
            ("Standard_ND128isr_NDR_GB200_v6", 4),
            ("Standard_ND128isr_GB300_v6", 4),
            ("Standard_NV36ads_A10_v5", 1),
            ("Standard_NV72ads_A10_v5", 2),
            ("Standard_NV12s_v3", 1),
            ("Standard_NV48s_v3", 4),
            ("Standard_NC24", 4),
        ] {
            assert_eq!(gpus(name), want, "{name}");
        }
        assert_eq!(gpus("standard_nd96isr_h100_v5"), 8, "case-insensitive");
    }

    #[test]
    fn fractions_and_amd_sizes_are_told_apart_and_unknown_sizes_are_unknown() {
        assert!(matches!(
            lookup("Standard_NV6ads_A10_v5"),
            Some(SizeFacts::Partial(
                _,
                PartialSize::NvidiaFraction {
                    numerator: 1,
                    denominator: 6,
                    ..
                }
            ))
        ));
        assert!(matches!(
            lookup("Standard_ND96isr_MI300X_v5"),
            Some(SizeFacts::Partial(_, PartialSize::Amd { .. }))
        ));
        // Karpenter-Azure knows these, but no Azure page gives their count: not guessed.
        for unknown in [
            "Standard_ND96is_H100_v5",
            "Standard_NC8ads_A10_v4",
            "Standard_D4s_v3",
        ] {
            assert_eq!(lookup(unknown), None, "{unknown}");
        }
    }

    #[test]
    fn every_size_appears_once() {
        let mut names: Vec<String> = NVIDIA_SIZES
            .iter()
            .map(|s| s.name.to_ascii_lowercase())
            .chain(PARTIAL_SIZES.iter().map(|(n, _)| n.to_ascii_lowercase()))
            .collect();
        let all = names.len();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all);
        assert!(NVIDIA_SIZES.iter().all(|s| s.gpus > 0));
    }
}
