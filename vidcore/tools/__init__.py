"""Small utilities that build things the project needs offline (tokenizers, random model folders)."""
