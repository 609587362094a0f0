"""Data: the unified parquet schema (`schema`), safe image checks (`images`), converters from
the original formats (`convert`), synthetic sources (`synthetic`), manifests (`manifest`) and the
tiny recipe's data (`tiny`). Submodules are imported explicitly: importing this package starts
nothing and imports neither Ray nor torch.
"""
