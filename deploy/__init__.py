"""Deployment configurations; deploy.local also holds the laptop demo that runs them."""
