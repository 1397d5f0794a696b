"""Tests of fal_edit_async.emulator."""
