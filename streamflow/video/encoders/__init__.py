"""Encoder backends behind `streamflow.video.encode.VideoWriter`: one interface (`base`), the choice (`select`),
one module a backend (`nvenc`, `thread`, `process`)."""
