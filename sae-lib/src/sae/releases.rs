//! SAELens' release names. `SAE.from_pretrained(release, sae_id)` names a published SAE by
//! its release and id, and SAELens' `pretrained_saes.yaml` maps each pair to a folder of a Hub
//! repository. `releases.tsv` keeps that map for the releases whose SAEs sae-lib reads
//! (written from SAELens' own directory by `scripts/make_release_table.py`), so that
//! `--sae pythia-70m-deduped-mlp-sm/blocks.5.hook_mlp_out` finds what SAELens would.

use crate::{Error, Result};

/// release, repository, SAE id, folder: one published SAE a line, `#` lines aside. A release
/// whose ids are its folders (Gemma Scope's) is one line with the id [`ANY`] and one of its
/// ids as the folder.
const TABLE: &str = include_str!("releases.tsv");

/// The SAE id of a release whose ids are its folders.
const ANY: &str = "*";

/// One line of the table.
struct Published<'a> {
    release: &'a str,
    repo: &'a str,
    sae_id: &'a str,
    folder: &'a str,
}

fn published() -> impl Iterator<Item = Published<'static>> {
    TABLE
        .lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let mut cols = line.split('\t');
            Some(Published {
                release: cols.next()?,
                repo: cols.next()?,
                sae_id: cols.next()?,
                folder: cols.next()?,
            })
        })
}

/// The Hub folder (`org/name/folder`) that `spec` names as `release/sae_id`. `None` when
/// `spec` does not start with a release name; an error listing the release's ids when the
/// id after it is not one of them.
pub(crate) fn hub_folder(spec: &str) -> Option<Result<String>> {
    let (release, sae_id) = spec.split_once('/').unwrap_or((spec, ""));
    let mut saes = published().filter(|p| p.release == release).peekable();
    saes.peek()?;
    let mut ids = Vec::new();
    for p in saes {
        if p.sae_id == ANY && !sae_id.is_empty() {
            return Some(Ok(format!("{}/{sae_id}", p.repo)));
        }
        if p.sae_id == sae_id {
            return Some(Ok(format!("{}/{}", p.repo, p.folder)));
        }
        ids.push(match p.sae_id {
            ANY => p.folder,
            id => id,
        });
    }
    let shown = ids.iter().take(12).copied().collect::<Vec<_>>().join(", ");
    let more = match ids.len().saturating_sub(12) {
        0 => String::new(),
        n => format!(" and {n} more"),
    };
    let given = match sae_id {
        "" => "needs an SAE id after it".to_string(),
        id => format!("has no SAE `{id}`"),
    };
    Some(Err(Error::Input(format!(
        "SAELens' release `{release}` {given}: pass --sae {release}/SAE_ID, with SAE_ID one of \
         {shown}{more}"
    ))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_has_four_columns_and_ids_are_unique_per_release() {
        let lines = TABLE.lines().filter(|l| !l.starts_with('#')).count();
        let all: Vec<_> = published().collect();
        assert_eq!(all.len(), lines);
        let mut keys: Vec<_> = all.iter().map(|p| (p.release, p.sae_id)).collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), all.len());
        assert!(all.iter().all(|p| p.repo.split('/').count() == 2));
    }

    #[test]
    fn release_and_id_give_the_folder_and_a_wrong_id_lists_the_right_ones() {
        let folder = |spec: &str| hub_folder(spec).map(|r| r.map_err(|e| e.to_string()));
        assert_eq!(
            folder("pythia-70m-deduped-mlp-sm/blocks.5.hook_mlp_out"),
            Some(Ok(
                "ctigges/pythia-70m-deduped__mlp-sm_processed/5-mlp-sm".into()
            ))
        );
        assert_eq!(
            folder("pythia-70m-deduped-res-sm/blocks.0.hook_resid_pre"),
            Some(Ok(
                "ctigges/pythia-70m-deduped__res-sm_processed/e-res-sm".into()
            ))
        );
        assert_eq!(
            folder("ctigges/pythia-70m-deduped__mlp-sm_processed/5-mlp-sm"),
            None
        );
        // Canonical names map to folders; elsewhere the id is the folder.
        assert_eq!(
            folder("gemma-scope-2b-pt-res-canonical/layer_20/width_16k/canonical"),
            Some(Ok(
                "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71".into()
            ))
        );
        assert_eq!(
            folder("gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71"),
            Some(Ok(
                "google/gemma-scope-2b-pt-res/layer_20/width_16k/average_l0_71".into()
            ))
        );
        let msg = folder("gemma-scope-2b-pt-res").unwrap().unwrap_err();
        assert!(
            msg.contains("needs an SAE id") && msg.contains("layer_"),
            "{msg}"
        );
        let msg = folder("pythia-70m-deduped-mlp-sm/blocks.5.hook_resid_post")
            .unwrap()
            .unwrap_err();
        assert!(
            msg.contains("has no SAE `blocks.5.hook_resid_post`")
                && msg.contains("blocks.5.hook_mlp_out"),
            "{msg}"
        );
        let msg = folder("sae_bench_pythia70m_sweep_topk_ctx128_0730")
            .unwrap()
            .unwrap_err();
        assert!(
            msg.contains("needs an SAE id") && msg.contains("more"),
            "{msg}"
        );
    }
}
