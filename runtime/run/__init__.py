"""`skyloc run`: the command, its inputs, the frame loop and the run summary."""
