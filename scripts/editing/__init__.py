"""Text-guided editing of real radiographs: inputs and masks, edit jobs, the editor (an inferer), and the
writer of edits."""
