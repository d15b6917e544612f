"""Operations: the integrity checker, key rotation and re-encryption, index repair."""
