"""Security: tokens and scopes, crypto (HKDF, AES-GCM, blind indexes), the PHI policy and codec."""
