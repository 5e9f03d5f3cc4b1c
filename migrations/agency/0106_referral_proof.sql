-- Proof of who referred a case (README, Signed handoffs): the first holder keeps the original
-- Referral envelope as its referrer published it, with the signature and certificate it came
-- with, so a hand-over can prove the case's referrer to the next holder
-- (ForwardedCase.original_envelope / _signature / _signer_cert). A handed-on case keeps the proof
-- inside its stored referral.
ALTER TABLE cases
    ADD COLUMN referral_envelope    BYTEA,
    ADD COLUMN referral_signature   BYTEA,
    ADD COLUMN referral_signer_cert BYTEA;
