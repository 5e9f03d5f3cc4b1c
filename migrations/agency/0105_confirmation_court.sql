-- The court a case's judicial confirmation application was made to, when it is not the case's
-- referrer (ConfirmationRequest.court): any court of the directory, for a case of any channel.
-- On that court's own copy of the case (opened by the application) it is the owner itself.
ALTER TABLE cases
    ADD COLUMN court_kind TEXT,
    ADD COLUMN court_code TEXT;
