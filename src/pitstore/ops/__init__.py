"""Operations that span the tiers: `gc` and `verify` over cache, catalog and files, and `migrate` between an
embedded and a team store."""
