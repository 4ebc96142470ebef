"""Which mutation calls change the protein: the classes counted as a gene "mutated".

MAF Variant_Classification values follow maftools' default non-synonymous set;
VCF consequences (VEP CSQ and SnpEff ANN) are Sequence Ontology terms with the same
meaning. Silent, UTR, intronic, flanking and intergenic calls are ignored: they are
present in every exome and would make every gene look mutated."""

from __future__ import annotations

NON_SILENT_MAF = frozenset(
    {
        "Frame_Shift_Del",
        "Frame_Shift_Ins",
        "In_Frame_Del",
        "In_Frame_Ins",
        "Missense_Mutation",
        "Nonsense_Mutation",
        "Nonstop_Mutation",
        "Splice_Site",
        "Translation_Start_Site",
    }
)

NON_SILENT_SO = frozenset(
    {
        "transcript_ablation",
        "exon_loss_variant",
        "splice_acceptor_variant",
        "splice_donor_variant",
        "stop_gained",
        "stop_lost",
        "start_lost",
        "initiator_codon_variant",
        "frameshift_variant",
        "missense_variant",
        "protein_altering_variant",
        "inframe_insertion",
        "inframe_deletion",
        "conservative_inframe_insertion",
        "conservative_inframe_deletion",
        "disruptive_inframe_insertion",
        "disruptive_inframe_deletion",
    }
)


def is_non_silent_so(consequence: str) -> bool:
    """``consequence`` may join several terms with '&' (both VEP and SnpEff do)."""
    return any(term in NON_SILENT_SO for term in consequence.split("&"))
