"""Index directories: ``writer.write_index`` builds one atomically, ``reader.open_index`` opens it."""
